from waypost.local.logs import deny_reason, is_access_log, readable

LINE = '[2026-11-27T17:35:27.044Z] "GET /v2 HTTP/1.1" 403 - rbac_access_denied_matched_policy[ns[quickstart]-policy[no-v2]-rule[0]] - "-" 0 19 0 -'


def test_deny_reason_names_policy_and_rule():
    assert deny_reason(LINE) == "denied by AuthorizationPolicy quickstart/no-v2, rule 0"
    assert deny_reason("rbac_access_denied_matched_policy[none]") == "denied: no ALLOW AuthorizationPolicy rule matched"
    assert deny_reason('"GET / HTTP/1.1" 200 - via_upstream') is None


def test_readable_and_access_log_detection():
    assert readable(LINE).endswith("# denied by AuthorizationPolicy quickstart/no-v2, rule 0")
    assert is_access_log(LINE)
    assert not is_access_log("[2026-11-27 17:35:27.044][123][warning][main] something")
