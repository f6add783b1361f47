  ;; ---------------------------------------------------------------------------------------------------
  ;; runtime.wat: the part every waypost proxy-wasm module shares. Not a module by itself: wasm/build.py
  ;; splices this file where a module says `;; @include runtime.wat` (right after `(module`, because
  ;; the WebAssembly text format wants imports before any definition).
  ;;
  ;; ABI: proxy-wasm 0.2.1 (github.com/proxy-wasm/spec, abi-versions/v0.2.1/README.md). Facts used here:
  ;;  - the host picks the ABI from the exported function `proxy_abi_version_0_2_1`;
  ;;  - it allocates in our memory (for values it returns) through `proxy_on_memory_allocate`, or the
  ;;    older `malloc` when that is absent; returning 0 means failure;
  ;;  - `proxy_on_context_create(id, parent)`: parent 0 creates a plugin (root) context, otherwise a
  ;;    per-stream context of plugin `parent`; `proxy_on_done` returns true to let the host finish,
  ;;    then `proxy_on_delete(id)` says to forget it;
  ;;  - `proxy_get_buffer_bytes(buffer, start, max, **data, *size)`, buffer 7 = PLUGIN_CONFIGURATION,
  ;;    readable in `proxy_on_configure`; status 0 = OK, 1 = NOT_FOUND;
  ;;  - maps: 0 = HTTP_REQUEST_HEADERS, 2 = HTTP_RESPONSE_HEADERS; actions: 0 = CONTINUE, 1 = PAUSE;
  ;;  - log levels: 0 trace, 1 debug, 2 info, 3 warn, 4 error, 5 critical.
  ;;
  ;; Several plugins may share one VM (Envoy shares a VM between plugins whose vm_id, VM configuration
  ;; and code are equal, as for Istio WasmPlugins, which set no vm_id), each with its own root context.
  ;; So a plugin's configuration is kept per root context (a slot below), and each stream context
  ;; remembers its root context in a hash table.
  ;;
  ;; Memory map (bytes):
  ;;      16..23   where the host writes the pointer and size of a value it returns
  ;;    1024..2047 runtime strings;  2048..4095 module strings
  ;;    4096..     32 root-context slots of 2048 bytes:
  ;;                 +0 root context id (0 = free)   +4 configuration size
  ;;                 +8+8i / +12+8i: pointer / length of parsed field i (i = 0..3; length -1 absent)
  ;;                 +40 module-specific word        +48.. copy of the configuration (2000 bytes max)
  ;;  131072..262143 stream context -> root context: 16384 slots of (key, value), linear probing
  ;;  262144..       scratch heap for values the host returns: a bump allocator, emptied at the start
  ;;                 of each callback that makes host calls (nothing in it outlives a callback)
  ;; ---------------------------------------------------------------------------------------------------
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 5 1024)

  (data (i32.const 1024) "waypost-wasm: plugin configuration is longer than 2000 bytes")  ;; 60
  (data (i32.const 1088) "waypost-wasm: more than 32 plugins share this VM")              ;; 48
  (data (i32.const 1152) "waypost-wasm: cannot read the plugin configuration")            ;; 50

  (global $heap (mut i32) (i32.const 262144))
  (global $found_ptr (mut i32) (i32.const 0))

  (func (export "proxy_abi_version_0_2_1"))

  ;; --- memory --------------------------------------------------------------------------------------
  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32) (local $top i32) (local $pages i32)
    (if (i32.gt_u (local.get $size) (i32.const 0x4000000)) (then (return (i32.const 0))))
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $top (i32.add (local.get $p) (local.get $size)))
    (local.set $pages (i32.shr_u (i32.add (local.get $top) (i32.const 65535)) (i32.const 16)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $top))
    (local.get $p))
  (export "malloc" (func $alloc))

  (func $heap_reset (global.set $heap (i32.const 262144)))

  (func $memeq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func $str_eq (param $a i32) (param $an i32) (param $b i32) (param $bn i32) (result i32)
    (if (i32.ne (local.get $an) (local.get $bn)) (then (return (i32.const 0))))
    (call $memeq (local.get $a) (local.get $b) (local.get $an)))

  ;; ASCII lower-casing in place (HTTP/1 header names reach filters lower-cased).
  (func $lower (param $p i32) (param $n i32)
    (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 65)) (i32.le_u (local.get $c) (i32.const 90)))
          (then (i32.store8 (local.get $p) (i32.add (local.get $c) (i32.const 32)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next))))

  (func $log (param $level i32) (param $p i32) (param $n i32)
    (drop (call $proxy_log (local.get $level) (local.get $p) (local.get $n))))

  ;; --- a tiny JSON scan -------------------------------------------------------------------------------
  ;; Finds `"key"` followed by optional blanks and `:` in [p, p+n) and returns the length of the JSON
  ;; string that follows (its first byte in $found_ptr); -1 when the key is absent; -2 when its value is
  ;; not a plain string (not a string, has a backslash escape, or is unterminated). Flat objects only:
  ;; nesting is not understood, a key is found at any depth.
  (func $skip_ws (param $j i32) (param $end i32) (result i32)
    (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $j) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $j)))
        (br_if $done (i32.eqz (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
                                      (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13))))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $next)))
    (local.get $j))

  (func $json_str (param $p i32) (param $n i32) (param $k i32) (param $kn i32) (result i32)
    (local $i i32) (local $end i32) (local $j i32) (local $s i32) (local $c i32)
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $i (local.get $p))
    (block $absent
      (loop $scan
        (br_if $absent (i32.gt_u (i32.add (local.get $i) (i32.add (local.get $kn) (i32.const 2))) (local.get $end)))
        (if (i32.and (i32.eq (i32.load8_u (local.get $i)) (i32.const 34))
                     (i32.eq (i32.load8_u (i32.add (local.get $i) (i32.add (local.get $kn) (i32.const 1)))) (i32.const 34)))
          (then
            (if (call $memeq (i32.add (local.get $i) (i32.const 1)) (local.get $k) (local.get $kn))
              (then
                (local.set $j (call $skip_ws (i32.add (local.get $i) (i32.add (local.get $kn) (i32.const 2))) (local.get $end)))
                (if (i32.and (i32.lt_u (local.get $j) (local.get $end)) (i32.eq (i32.load8_u (local.get $j)) (i32.const 58)))
                  (then
                    ;; `"key":` found: its value must be a plain string
                    (local.set $j (call $skip_ws (i32.add (local.get $j) (i32.const 1)) (local.get $end)))
                    (if (i32.ge_u (local.get $j) (local.get $end)) (then (return (i32.const -2))))
                    (if (i32.ne (i32.load8_u (local.get $j)) (i32.const 34)) (then (return (i32.const -2))))
                    (local.set $s (i32.add (local.get $j) (i32.const 1)))
                    (local.set $j (local.get $s))
                    (loop $str
                      (if (i32.ge_u (local.get $j) (local.get $end)) (then (return (i32.const -2))))
                      (local.set $c (i32.load8_u (local.get $j)))
                      (if (i32.eq (local.get $c) (i32.const 92)) (then (return (i32.const -2))))
                      (if (i32.eq (local.get $c) (i32.const 34))
                        (then
                          (global.set $found_ptr (local.get $s))
                          (return (i32.sub (local.get $j) (local.get $s)))))
                      (local.set $j (i32.add (local.get $j) (i32.const 1)))
                      (br $str))))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const -1))

  ;; --- plugin (root context) slots ------------------------------------------------------------------
  (func $root_slot (param $id i32) (result i32)
    (local $s i32)
    (local.set $s (i32.const 4096))
    (block $none
      (loop $next
        (br_if $none (i32.ge_u (local.get $s) (i32.const 69632)))
        (if (i32.eq (i32.load (local.get $s)) (local.get $id)) (then (return (local.get $s))))
        (local.set $s (i32.add (local.get $s) (i32.const 2048)))
        (br $next)))
    (i32.const 0))

  (func $root_slot_alloc (param $id i32) (result i32)
    (local $s i32)
    (local.set $s (call $root_slot (local.get $id)))
    (if (local.get $s) (then (return (local.get $s))))
    (local.set $s (call $root_slot (i32.const 0)))
    (if (i32.eqz (local.get $s)) (then (return (i32.const 0))))
    (memory.fill (local.get $s) (i32.const 0) (i32.const 48))
    (i32.store (local.get $s) (local.get $id))
    (local.get $s))

  ;; Copies plugin `root`'s configuration (`size` bytes) into its slot; returns the slot, or 0 (logged).
  (func $load_config (param $root i32) (param $size i32) (result i32)
    (local $s i32) (local $n i32)
    (local.set $s (call $root_slot_alloc (local.get $root)))
    (if (i32.eqz (local.get $s))
      (then (call $log (i32.const 4) (i32.const 1088) (i32.const 48)) (return (i32.const 0))))
    (memory.fill (i32.add (local.get $s) (i32.const 4)) (i32.const 0) (i32.const 44))
    (i32.store offset=12 (local.get $s) (i32.const -1))
    (i32.store offset=20 (local.get $s) (i32.const -1))
    (i32.store offset=28 (local.get $s) (i32.const -1))
    (i32.store offset=36 (local.get $s) (i32.const -1))
    (if (i32.gt_u (local.get $size) (i32.const 2000))
      (then (call $log (i32.const 4) (i32.const 1024) (i32.const 60)) (return (i32.const 0))))
    (if (local.get $size)
      (then
        (if (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (local.get $size) (i32.const 16) (i32.const 20))
          (then (call $log (i32.const 4) (i32.const 1152) (i32.const 50)) (return (i32.const 0))))
        (local.set $n (i32.load (i32.const 20)))
        (if (i32.gt_u (local.get $n) (i32.const 2000)) (then (local.set $n (i32.const 2000))))
        (memory.copy (i32.add (local.get $s) (i32.const 48)) (i32.load (i32.const 16)) (local.get $n))
        (i32.store offset=4 (local.get $s) (local.get $n))))
    (local.get $s))

  ;; Parses string field `key` of the slot's configuration into field `idx`; returns what $json_str did.
  (func $parse_field (param $s i32) (param $idx i32) (param $k i32) (param $kn i32) (result i32)
    (local $n i32) (local $f i32)
    (local.set $f (i32.add (local.get $s) (i32.add (i32.const 8) (i32.shl (local.get $idx) (i32.const 3)))))
    (local.set $n (call $json_str (i32.add (local.get $s) (i32.const 48)) (i32.load offset=4 (local.get $s)) (local.get $k) (local.get $kn)))
    (if (i32.ge_s (local.get $n) (i32.const 0)) (then (i32.store (local.get $f) (global.get $found_ptr))))
    (i32.store offset=4 (local.get $f) (local.get $n))
    (local.get $n))

  (func $field_ptr (param $s i32) (param $idx i32) (result i32)
    (i32.load offset=8 (i32.add (local.get $s) (i32.shl (local.get $idx) (i32.const 3)))))
  (func $field_len (param $s i32) (param $idx i32) (result i32)
    (i32.load offset=12 (i32.add (local.get $s) (i32.shl (local.get $idx) (i32.const 3)))))
  (func $set_field (param $s i32) (param $idx i32) (param $p i32) (param $n i32)
    (i32.store offset=8 (i32.add (local.get $s) (i32.shl (local.get $idx) (i32.const 3))) (local.get $p))
    (i32.store offset=12 (i32.add (local.get $s) (i32.shl (local.get $idx) (i32.const 3))) (local.get $n)))

  ;; --- stream context -> root context (linear probing, backward-shift deletion) ----------------------
  ;; slot i at 131072 + 8*i: key (0 = empty), value
  (func $ctx_put (param $k i32) (param $v i32)
    (local $i i32) (local $a i32) (local $tries i32)
    (local.set $i (i32.and (local.get $k) (i32.const 16383)))
    (loop $probe
      (local.set $a (i32.add (i32.const 131072) (i32.shl (local.get $i) (i32.const 3))))
      (if (i32.or (i32.eqz (i32.load (local.get $a))) (i32.eq (i32.load (local.get $a)) (local.get $k)))
        (then (i32.store (local.get $a) (local.get $k)) (i32.store offset=4 (local.get $a) (local.get $v)) (return)))
      (local.set $i (i32.and (i32.add (local.get $i) (i32.const 1)) (i32.const 16383)))
      (local.set $tries (i32.add (local.get $tries) (i32.const 1)))
      (br_if $probe (i32.lt_u (local.get $tries) (i32.const 16383)))))
    ;; full (16383 live streams in this VM): the stream stays unmapped, modules then treat it as unconfigured

  ;; Address of key k's table slot, or 0.
  (func $ctx_find (param $k i32) (result i32)
    (local $i i32) (local $a i32) (local $tries i32)
    (local.set $i (i32.and (local.get $k) (i32.const 16383)))
    (loop $probe
      (local.set $a (i32.add (i32.const 131072) (i32.shl (local.get $i) (i32.const 3))))
      (if (i32.eq (i32.load (local.get $a)) (local.get $k)) (then (return (local.get $a))))
      (if (i32.eqz (i32.load (local.get $a))) (then (return (i32.const 0))))
      (local.set $i (i32.and (i32.add (local.get $i) (i32.const 1)) (i32.const 16383)))
      (local.set $tries (i32.add (local.get $tries) (i32.const 1)))
      (br_if $probe (i32.lt_u (local.get $tries) (i32.const 16384))))
    (i32.const 0))

  (func $ctx_del (param $k i32)
    (local $a i32) (local $i i32) (local $j i32) (local $h i32) (local $b i32) (local $move i32)
    (local.set $a (call $ctx_find (local.get $k)))
    (if (i32.eqz (local.get $a)) (then (return)))
    (local.set $i (i32.shr_u (i32.sub (local.get $a) (i32.const 131072)) (i32.const 3)))
    (local.set $j (local.get $i))
    (block $done
      (loop $shift
        (local.set $j (i32.and (i32.add (local.get $j) (i32.const 1)) (i32.const 16383)))
        (local.set $b (i32.add (i32.const 131072) (i32.shl (local.get $j) (i32.const 3))))
        (br_if $done (i32.eqz (i32.load (local.get $b))))
        (local.set $h (i32.and (i32.load (local.get $b)) (i32.const 16383)))
        ;; the entry at j may fill hole i unless its home h lies cyclically in (i, j]
        (if (i32.le_u (local.get $i) (local.get $j))
          (then (local.set $move (i32.or (i32.le_u (local.get $h) (local.get $i)) (i32.gt_u (local.get $h) (local.get $j)))))
          (else (local.set $move (i32.and (i32.le_u (local.get $h) (local.get $i)) (i32.gt_u (local.get $h) (local.get $j))))))
        (if (local.get $move)
          (then
            (i64.store (i32.add (i32.const 131072) (i32.shl (local.get $i) (i32.const 3))) (i64.load (local.get $b)))
            (local.set $i (local.get $j))))
        (br $shift)))
    (i64.store (i32.add (i32.const 131072) (i32.shl (local.get $i) (i32.const 3))) (i64.const 0)))

  ;; The slot of the plugin that stream context `ctx` belongs to, or 0.
  (func $stream_slot (param $ctx i32) (result i32)
    (local $a i32)
    (local.set $a (call $ctx_find (local.get $ctx)))
    (if (i32.eqz (local.get $a)) (then (return (i32.const 0))))
    (call $root_slot (i32.load offset=4 (local.get $a))))

  ;; --- context lifecycle ----------------------------------------------------------------------------
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent))
      (then (drop (call $root_slot_alloc (local.get $ctx))))
      (else (call $ctx_put (local.get $ctx) (local.get $parent)))))

  (func (export "proxy_on_done") (param $ctx i32) (result i32) (i32.const 1))

  (func (export "proxy_on_delete") (param $ctx i32)
    (local $s i32)
    (local.set $s (call $root_slot (local.get $ctx)))
    (if (local.get $s)
      (then (i32.store (local.get $s) (i32.const 0)))
      (else (call $ctx_del (local.get $ctx)))))
  ;; ------------------------------------------------------------------------ end of runtime.wat -------
