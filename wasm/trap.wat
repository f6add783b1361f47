;; trap.wat: a proxy-wasm (ABI 0.2.1) HTTP filter that traps (`unreachable`), to exercise Envoy's
;; failure policy (Istio WasmPlugin failStrategy: fail_open / failure_policy).
;;
;; Where it traps:
;;   - in proxy_on_vm_start when the VM configuration (vm_config.configuration) is not empty;
;;   - in proxy_on_configure when the plugin configuration has "trap_on": "configure";
;;   - otherwise in the phase named by "trap_on": "request_headers" (the default, also for an empty
;;     configuration), "response_headers", or "none" (never traps: proves the module itself loads).
;; Any other "trap_on" value makes proxy_on_configure return false (the plugin is refused).
(module
  ;; @include runtime.wat

  (data (i32.const 2048) "trap_on")           ;; 7
  (data (i32.const 2056) "configure")         ;; 9
  (data (i32.const 2072) "request_headers")   ;; 15
  (data (i32.const 2088) "response_headers")  ;; 16
  (data (i32.const 2112) "none")              ;; 4
  (data (i32.const 2120) "trap: \"trap_on\" must be one of configure, request_headers, response_headers, none")  ;; 81
  (data (i32.const 2208) "trap: configured")  ;; 16

  (func (export "proxy_on_vm_start") (param $unused i32) (param $size i32) (result i32)
    (if (local.get $size) (then unreachable))
    (i32.const 1))

  ;; the slot's module word (+40): 0 never trap, 1 trap in request headers, 2 trap in response headers
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $s i32) (local $n i32) (local $p i32)
    (call $heap_reset)
    (local.set $s (call $load_config (local.get $root) (local.get $size)))
    (if (i32.eqz (local.get $s)) (then (return (i32.const 0))))
    (local.set $n (call $parse_field (local.get $s) (i32.const 0) (i32.const 2048) (i32.const 7)))
    (local.set $p (call $field_ptr (local.get $s) (i32.const 0)))
    (block $ok
      (if (i32.eq (local.get $n) (i32.const -1))
        (then (i32.store offset=40 (local.get $s) (i32.const 1)) (br $ok)))
      (if (call $str_eq (local.get $p) (local.get $n) (i32.const 2056) (i32.const 9))
        (then unreachable))
      (if (call $str_eq (local.get $p) (local.get $n) (i32.const 2072) (i32.const 15))
        (then (i32.store offset=40 (local.get $s) (i32.const 1)) (br $ok)))
      (if (call $str_eq (local.get $p) (local.get $n) (i32.const 2088) (i32.const 16))
        (then (i32.store offset=40 (local.get $s) (i32.const 2)) (br $ok)))
      (if (call $str_eq (local.get $p) (local.get $n) (i32.const 2112) (i32.const 4))
        (then (i32.store offset=40 (local.get $s) (i32.const 0)) (br $ok)))
      (call $log (i32.const 4) (i32.const 2120) (i32.const 81))
      (return (i32.const 0)))
    (call $log (i32.const 2) (i32.const 2208) (i32.const 16))
    (i32.const 1))

  (func $mode (param $ctx i32) (result i32)
    (local $s i32)
    (local.set $s (call $stream_slot (local.get $ctx)))
    (if (i32.eqz (local.get $s)) (then (return (i32.const 0))))
    (i32.load offset=40 (local.get $s)))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eq (call $mode (local.get $ctx)) (i32.const 1)) (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eq (call $mode (local.get $ctx)) (i32.const 2)) (then unreachable))
    (i32.const 0))
)
