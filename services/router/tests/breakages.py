# ruff: noqa: E501  (a table of code snippets: they are kept verbatim, one per line)
"""Break-it checks: apply each deliberate breakage, run the test that must catch it, restore the file.

    uv run python services/router/tests/breakages.py [name ...]

Prints CAUGHT (the test failed, as it must), MISSED (it passed: the test is blind) or ERROR. Not collected by
pytest (no test_ prefix); it rewrites source files while it runs, so do not run it beside other work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

R = str(Path(__file__).resolve().parents[3]) + "/"
S = "services/router/src/frugal/router/"
T = "services/router/tests/"
BREAKS: dict[str, tuple[str, list[tuple[str, str]], str]] = {
 "ignore_deadline": (S+"server.py", [
   ("budget_s = s.provider_timeout_s if left is None else min(s.provider_timeout_s, left - DEADLINE_RESERVE_S)",
    "budget_s = s.provider_timeout_s"),
   ("            if left is not None and not last:\n                first_token_s =", "            if False:\n                first_token_s =")],
   T+"test_router_resilience.py::test_a_hung_first_deployment_leaves_time_for_the_next_within_the_callers_deadline"),
 "serial_context": (S+"server.py", [
   ("rag_ctx, vision_ctx = await asyncio.gather(rag_task, vision_task)", "rag_ctx = await rag_task\n        vision_ctx = await vision_task"),
   ("return asyncio.ensure_future(rag), asyncio.ensure_future(vision)", "return rag, vision  # type: ignore")],
   T+"test_router_context.py::test_rag_and_vision_are_fetched_concurrently"),
 "no_context_cap": (S+"server.py", [("cap = None if left is None else max(left / 2, 0.001)", "cap = None")],
   T+"test_router_context.py::test_context_waits_are_capped_by_the_callers_deadline"),
 "no_thinking_billing": (S+"providers/gemini.py", [("(md.candidates_token_count or 0) + (md.thoughts_token_count or 0)", "(md.candidates_token_count or 0)")],
   T+"test_router_usage.py::test_gemini_thinking_tokens_are_billed_as_output"),
 "no_settle": (S+"server.py", [("note = await self.core.limiter.settle(tenant, used - reserved, timeout_s=clock.redis_timeout())", "note = None")],
   T+"test_router_limits.py::test_respond_settles_the_reservation_to_the_reported_usage"),
 "fixed_window": (S+"limits.py", [("return c, p, p * (1 - elapsed) + c", "return c, p, c")],
   T+"test_router_limits.py::test_the_window_slides_the_previous_minute_still_counts"),
 # further behaviours
 "no_escaping": (S+"prompt.py", [('return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")', "return s")],
   T+"test_router_context.py::test_an_injected_instruction_in_a_document_stays_data"),
 "no_availability": (S+"server.py", [("        if route.tier == decision.tier:\n            return decision", "        return decision")],
   T+"test_router_resilience.py::test_a_gemini_only_deployment_answers_every_tier"),
 "no_shared_breaker": (S+"health.py", [("        if not names or time.monotonic()", "        if names or time.monotonic()")],
   T+"test_router_resilience.py::test_the_breaker_is_shared_by_replicas_through_redis"),
 "ignore_retry_after": (S+"health.py", [("immediate = min(err.retry_after_s if err.retry_after_s is not None else cfg.rate_limit_cooldown_s,", "immediate = min(cfg.rate_limit_cooldown_s,")],
   T+"test_router_resilience.py::test_a_429_cools_the_deployment_down_for_its_retry_after"),
 "no_local_cooldown": (S+"health.py", [("        elif st.failures >= cfg.failure_threshold:", "        elif False:")],
   T+"test_router_resilience.py::test_a_hanging_provider_cools_down_is_skipped_and_is_retried_after_the_cooldown"),
 "unbounded_redis": (S+"bounded.py", [("return max(0.001, min(base, (left - DEADLINE_RESERVE_S) * REDIS_SHARE))", "return 30.0"), ("            return base\n", "            return 30.0\n")],
   T+"test_router_resilience.py::test_a_redis_that_never_answers_does_not_hold_the_turn_past_its_deadline"),
 "no_trim": (S+"turn_budget.py", [("        if used + cost > room:\n            break", "        pass")],
   T+"test_router_resilience.py::test_a_two_million_token_history_is_trimmed_to_the_window"),
 "limiter_lets_big_through": (S+"limits.py", [("if tok_limit > 0 and cost > tok_limit then\n  return {0, 'too_large', '0', tostring(t_used)}\nend", "")],
   T+"test_router_limits.py::test_a_request_larger_than_the_whole_window_is_refused_even_when_empty"),
 "no_partial_usage": (S+"providers/base.py", [("    if reported is None:\n        return None", "    if True:\n        return None")],
   T+"test_router_usage.py::test_an_interrupted_claude_call_bills_the_input_it_reported"),
 "no_cached_tokens": (S+"providers/claude.py", [("cached_input_tokens=read or 0,", "cached_input_tokens=0,")],
   T+"test_router_usage.py::test_cached_input_tokens_are_read_from_both_providers"),
 "gemini_parse_error_escapes": (S+"providers/gemini.py", [("        except ProviderError:\n            raise\n        except Exception as err:", "        except ProviderError:\n            raise\n        except ZeroDivisionError as err:")],
   T+"test_router_usage.py::test_an_unparseable_gemini_chunk_falls_back_and_is_billed"),
 "claude_tool_json_dropped": (S+"providers/claude.py", [('yield ToolCallChunk(ToolCallOut(call_id, name, "".join(pieces) or "{}"))', 'yield ToolCallChunk(ToolCallOut(call_id, name, "{}"))')],
   T+"test_router_tools.py::test_claude_tool_call_round_trip"),
 "gemini_tool_result_unnamed": (S+"server.py", [('tool_name=names.get(msg.tool_call_id, ""), tool_error', 'tool_name="", tool_error')],
   T+"test_router_tools.py::test_gemini_tool_call_round_trip_and_a_claude_call_answered_by_gemini"),
 "no_round_robin": (S+"deployments.py", [("        shift = next(self._turns.setdefault(model, itertools.count())) % len(ds)", "        shift = 0")],
   T+"test_router_resilience.py::test_several_deployments_per_model_are_load_balanced_and_fail_over"),
 "keep_orphan_tool_results": (S+"turn_budget.py", [("    if orphans and len(kept) < len(history):  # only trimming creates orphans we must drop", "    if False:")],
   T+"test_router_tools.py::test_trimming_that_drops_a_tool_call_drops_its_result_too"),
 "cascade_despite_tier_rule": (S+"decision.py", [("and idx > 0 and not tenant_tier_rule and verdict", "and idx > 0 and verdict")],
   T+"test_router_learned.py::test_pinned_tier_or_budget_downgrade_turns_the_cascade_off"),
 "cascade_keeps_unscored": (S+"cascade.py", [("        kept = verdict is not None and verdict.keep", "        kept = verdict is None or verdict.keep")],
   T+"test_router_cascade.py::test_a_cheap_attempt_that_fails_escalates_even_when_the_answers_would_be_kept"),
 "no_rag_char_cap": (S+"context.py", [("                content = content[:room]\n", "                content = content\n"), ("                if room <= 0:\n                    break\n", "")],
   T+"test_router_context.py::test_context_is_capped_in_characters_and_analyses_and_blank_passages_are_dropped"),
 "cascade_unanswered_free": (S+"cascade.py", [("estimate=UsageAmounts(input_tokens=a.prompt_tokens, output_tokens", "estimate=UsageAmounts(input_tokens=0, output_tokens")],
   T+"test_router_cascade.py::test_a_cheap_attempt_that_times_out_unanswered_is_billed_for_the_prompt_it_sent"),
}


def main(names: list[str]) -> int:
    missed = 0
    for name in names:
        path, reps, test = BREAKS[name]
        file = Path(R + path)
        src = file.read_text()
        broken = src
        for a, b in reps:
            if broken.count(a) != 1:
                raise SystemExit(f"{name}: the code to break is not found once in {path}: {a!r}")
            broken = broken.replace(a, b)
        file.write_text(broken)
        try:
            r = subprocess.run(["timeout", "300", "uv", "run", "pytest", "-q", "-p", "no:cacheprovider", test],
                               cwd=R, capture_output=True, text=True, check=False)
        finally:
            file.write_text(src)
        last = [ln for ln in r.stdout.splitlines() if "passed" in ln or "failed" in ln or "error" in ln][-1:]
        verdict = "CAUGHT" if r.returncode != 0 and last and "failed" in last[0] else "MISSED" if last else "ERROR"
        missed += verdict != "CAUGHT"
        print(f"{name:28s} {verdict}  {test.split('::')[1]}  {last}", flush=True)
    return missed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:] or list(BREAKS)) else 0)
