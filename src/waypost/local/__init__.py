"""The embedded local mesh: the processes behind `waypost up` (see ARCHITECTURE.md)."""

import os

# The supervisor forks children (Envoys, the workload process) while gRPC threads serve xDS. gRPC's fork
# handlers then abort the child at random ("epoll_wait error: Bad file descriptor"); the children exec
# right away and need none of gRPC's state. This must be set before gRPC is imported, and any module of
# this package may be the first to import it (`changes` does, through `rollout` and `xds`), so it is set
# when the package is.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
