;; add_header.wat: a proxy-wasm (ABI 0.2.1) HTTP filter that adds headers named in its plugin configuration.
;;
;; Configuration (the plugin configuration bytes; Istio's WasmPlugin `pluginConfig` arrives as this JSON
;; object), string fields only, plain JSON strings without backslash escapes, 2000 bytes at most:
;;   "header"          name of a RESPONSE header to add (optional)
;;   "value"           its value
;;   "request_header"  name of a REQUEST header to add before the request goes on (optional)
;;   "request_value"   its value (optional: defaults to "value")
;; At least one of "header" / "request_header" must be given, each with a value. Names are lower-cased.
;; Headers are ADDED (proxy_add_header_map_value), never replaced: two plugins adding the same request
;; header, e.g. {"request_header": "x-wasm-trace", "value": "first"} then {... "value": "second"},
;; leave both values, in the order the plugins ran (Envoy sends them as two header lines).
;; Examples:  {"header": "x-wasm", "value": "hello"}
;;            {"request_header": "x-wasm-trace", "request_value": "authn", "header": "x-wasm-seen", "value": "1"}
;; (A key given twice: the first occurrence wins.)
;; A bad configuration makes proxy_on_configure return false: Envoy then refuses the plugin.
(module
  ;; @include runtime.wat

  (data (i32.const 2048) "header")          ;; 6
  (data (i32.const 2056) "value")           ;; 5
  (data (i32.const 2064) "request_header")  ;; 14
  (data (i32.const 2080) "request_value")   ;; 13
  (data (i32.const 2112) "add_header: config needs \"header\" and/or \"request_header\", each with a \"value\" (plain JSON strings)")  ;; 99
  (data (i32.const 2240) "add_header: configured")  ;; 22

  (func (export "proxy_on_vm_start") (param $unused i32) (param $size i32) (result i32) (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $s i32) (local $h i32) (local $v i32) (local $rh i32) (local $rv i32)
    (call $heap_reset)
    (local.set $s (call $load_config (local.get $root) (local.get $size)))
    (if (i32.eqz (local.get $s)) (then (return (i32.const 0))))
    (local.set $h (call $parse_field (local.get $s) (i32.const 0) (i32.const 2048) (i32.const 6)))
    (local.set $v (call $parse_field (local.get $s) (i32.const 1) (i32.const 2056) (i32.const 5)))
    (local.set $rh (call $parse_field (local.get $s) (i32.const 2) (i32.const 2064) (i32.const 14)))
    (local.set $rv (call $parse_field (local.get $s) (i32.const 3) (i32.const 2080) (i32.const 13)))
    (block $bad
      (br_if $bad (i32.or (i32.or (i32.eq (local.get $h) (i32.const -2)) (i32.eq (local.get $v) (i32.const -2)))
                          (i32.or (i32.eq (local.get $rh) (i32.const -2)) (i32.eq (local.get $rv) (i32.const -2)))))
      (br_if $bad (i32.or (i32.eqz (local.get $h)) (i32.eqz (local.get $rh))))          ;; empty names
      (br_if $bad (i32.and (i32.lt_s (local.get $h) (i32.const 0)) (i32.lt_s (local.get $rh) (i32.const 0))))
      (br_if $bad (i32.and (i32.gt_s (local.get $h) (i32.const 0)) (i32.lt_s (local.get $v) (i32.const 0))))
      (br_if $bad (i32.and (i32.gt_s (local.get $rh) (i32.const 0))
                           (i32.and (i32.lt_s (local.get $v) (i32.const 0)) (i32.lt_s (local.get $rv) (i32.const 0)))))
      (if (i32.lt_s (local.get $rv) (i32.const 0))
        (then (call $set_field (local.get $s) (i32.const 3) (call $field_ptr (local.get $s) (i32.const 1)) (local.get $v))))
      (if (i32.gt_s (local.get $h) (i32.const 0))
        (then (call $lower (call $field_ptr (local.get $s) (i32.const 0)) (local.get $h))))
      (if (i32.gt_s (local.get $rh) (i32.const 0))
        (then (call $lower (call $field_ptr (local.get $s) (i32.const 2)) (local.get $rh))))
      (call $log (i32.const 2) (i32.const 2240) (i32.const 22))
      (return (i32.const 1)))
    (call $log (i32.const 4) (i32.const 2112) (i32.const 99))
    (i32.const 0))

  ;; adds field `name`'s header with field `name + 1`'s value to map `map` when the stream's plugin has it
  (func $add (param $ctx i32) (param $map i32) (param $name i32)
    (local $s i32)
    (call $heap_reset)
    (local.set $s (call $stream_slot (local.get $ctx)))
    (if (i32.eqz (local.get $s)) (then (return)))
    (if (i32.gt_s (call $field_len (local.get $s) (local.get $name)) (i32.const 0))
      (then
        (drop (call $proxy_add_header_map_value (local.get $map)
          (call $field_ptr (local.get $s) (local.get $name)) (call $field_len (local.get $s) (local.get $name))
          (call $field_ptr (local.get $s) (i32.add (local.get $name) (i32.const 1)))
          (call $field_len (local.get $s) (i32.add (local.get $name) (i32.const 1))))))))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $add (local.get $ctx) (i32.const 0) (i32.const 2))   ;; HTTP_REQUEST_HEADERS, request_header/request_value
    (i32.const 0))                                             ;; CONTINUE

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $add (local.get $ctx) (i32.const 2) (i32.const 0))   ;; HTTP_RESPONSE_HEADERS, header/value
    (i32.const 0))
)
