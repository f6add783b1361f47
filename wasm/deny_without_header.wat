;; deny_without_header.wat: a proxy-wasm (ABI 0.2.1) HTTP filter that answers 403 `denied by wasm` to any
;; request lacking a given header, and lets every other request go on.
;;
;; Configuration (the plugin configuration bytes, e.g. Istio's WasmPlugin `pluginConfig` as JSON):
;;   "header"  name of the request header that must be present (optional, default "x-wasm-allow";
;;             lower-cased; a plain JSON string without backslash escapes)
;; An empty configuration, `{}` or any JSON without "header" uses the default.
;; The local reply: status 403, body `denied by wasm`, response code details `wasm_denied`
;; (proxy_send_local_response; grpc_status -1 = not a gRPC reply, as the proxy-wasm Rust SDK's
;; send_http_response passes it), then the filter returns PAUSE so the request goes no further.
;; A stream whose plugin is unknown (not configured) is denied too: this filter fails closed.
(module
  ;; @include runtime.wat

  (data (i32.const 2048) "header")          ;; 6
  (data (i32.const 2056) "x-wasm-allow")    ;; 12
  (data (i32.const 2072) "wasm_denied")     ;; 11
  (data (i32.const 2088) "denied by wasm")  ;; 14
  (data (i32.const 2112) "deny_without_header: \"header\" must be a non-empty plain JSON string")  ;; 67
  (data (i32.const 2192) "deny_without_header: configured")  ;; 31

  (func (export "proxy_on_vm_start") (param $unused i32) (param $size i32) (result i32) (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $s i32) (local $h i32)
    (call $heap_reset)
    (local.set $s (call $load_config (local.get $root) (local.get $size)))
    (if (i32.eqz (local.get $s)) (then (return (i32.const 0))))
    (local.set $h (call $parse_field (local.get $s) (i32.const 0) (i32.const 2048) (i32.const 6)))
    (if (i32.or (i32.eqz (local.get $h)) (i32.eq (local.get $h) (i32.const -2)))
      (then
        (call $log (i32.const 4) (i32.const 2112) (i32.const 67))
        (return (i32.const 0))))
    (if (i32.eq (local.get $h) (i32.const -1))
      (then (call $set_field (local.get $s) (i32.const 0) (i32.const 2056) (i32.const 12)))
      (else (call $lower (call $field_ptr (local.get $s) (i32.const 0)) (local.get $h))))
    (call $log (i32.const 2) (i32.const 2192) (i32.const 31))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $s i32)
    (call $heap_reset)
    (local.set $s (call $stream_slot (local.get $ctx)))
    (if (local.get $s)
      (then
        ;; status 0 (OK): the header is there
        (if (i32.eqz (call $proxy_get_header_map_value (i32.const 0)
                       (call $field_ptr (local.get $s) (i32.const 0)) (call $field_len (local.get $s) (i32.const 0))
                       (i32.const 16) (i32.const 20)))
          (then (return (i32.const 0))))))   ;; CONTINUE
    (drop (call $proxy_send_local_response
      (i32.const 403)
      (i32.const 2072) (i32.const 11)        ;; response code details
      (i32.const 2088) (i32.const 14)        ;; body
      (i32.const 0) (i32.const 0)            ;; no extra headers
      (i32.const -1)))                       ;; not gRPC
    (i32.const 1))                           ;; PAUSE
)
