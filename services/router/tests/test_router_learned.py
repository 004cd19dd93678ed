"""learned-v1: the artifact (checksum, encoder digest, bit-for-bit rebuild, fitted on training rows only), the
decision (floor operating point, tenant mix, follow-ups, cascade flag) and the answer scorer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from frugal.api.billing.v1 import billing_pb2
from frugal.api.common.v1 import common_pb2
from frugal.common.pricing import TIERS, default_catalog
from frugal.devkit.routing.conversational import LabelledTurn, load_turns
from frugal.devkit.routing.evaldata import DataMissing, Dataset, data_root, load_all
from frugal.router.cascade import ANSWER_FEATURES, AnswerScorer, agreement, answer_features
from frugal.router.decision import Decider, TurnText
from frugal.router.learned import LEARNED_ARTIFACT_FILE, LearnedScorer, is_follow_up, load_learned_payload
from frugal.router.scoring import DEFAULT_SCORER, ScorerError, TierMix, load_scorers

DATA = Path(__file__).resolve().parents[1] / "src" / "frugal" / "router" / "data"
HARD = "Prove that there are infinitely many primes, step by step."


@pytest.fixture(scope="module")
def scorers() -> Any:
    return load_scorers()


def decider(scorers: Any, **kw: Any) -> Decider:
    return Decider(scorers, default_catalog(), TierMix(0.6, 0.25, 0.15),
                   provider_of=lambda tier: ("offline", True), **kw)


def test_learned_is_the_default_and_the_others_stay_selectable(scorers: Any) -> None:
    assert DEFAULT_SCORER == "learned-v1" and scorers.default == "learned-v1"
    assert {"hybrid-v2", "heuristic-seed", "lexical-ridge-v1"} <= set(scorers.names)
    d = decider(scorers)
    for name in ("hybrid-v2", "heuristic-seed"):
        assert d.decide(TurnText("Hi there!"), scorer_name=name).scorer == name


def test_artifact_is_small_and_refused_when_corrupt_or_for_another_encoder(tmp_path: Path, scorers: Any) -> None:
    src = DATA / LEARNED_ARTIFACT_FILE
    assert src.stat().st_size < 100_000
    path = tmp_path / LEARNED_ARTIFACT_FILE
    shutil.copy(src, path)
    shutil.copy(src.with_name(src.name + ".sha256"), path.with_name(path.name + ".sha256"))
    assert load_learned_payload(path)["name"] == "learned-v1"
    # One byte changed: the checksum no longer matches.
    raw = bytearray(path.read_bytes())
    raw[100] = ord("x") if raw[100] != ord("x") else ord("y")
    path.write_bytes(bytes(raw))
    with pytest.raises(ScorerError, match="corrupt"):
        load_scorers(learned_artifact_path=path)
    # A valid checksum over an artifact fitted on another embedding table.
    payload = json.loads(src.read_bytes())
    payload["model"]["encoder_table_sha256"] = "0" * 64
    data = json.dumps(payload, sort_keys=True).encode()
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    with pytest.raises(ScorerError, match="different encoder"):
        load_scorers(learned_artifact_path=path)
    # No sidecar at all.
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(ScorerError, match="unverified"):
        load_scorers(learned_artifact_path=path)


def test_floor_operating_point_by_default_and_the_tenant_mix_when_set(scorers: Any) -> None:
    learned = scorers.get("learned-v1")
    assert isinstance(learned, LearnedScorer)
    d = decider(scorers)
    plain = d.decide(TurnText(HARD))
    from frugal.router.features import extract_features

    a = learned.assess(HARD, extract_features(HARD))
    # The floor point of the turn's cluster (per-cluster thresholds shipped in the artifact).
    assert 0 <= a.cluster < len(learned.cluster_names)
    point = learned.floor_point(a, cascade=True)
    assert plain.operating_point == "floor" and plain.thresholds == (point.t1, point.t2)
    assert plain.tier == TIERS[point.route(a.p_lite, a.p_standard)[0]]
    assert plain.p_lite is not None and 0 < plain.p_lite < 1
    policy = billing_pb2.TenantPolicy(target_mix=common_pb2.TierMix(lite=0.2, standard=0.3, premium=0.5))
    mixed = d.decide(TurnText(HARD), policy=policy)
    assert mixed.operating_point == "mix" and not mixed.cascade
    assert mixed.thresholds == learned.reference.thresholds(TierMix(0.2, 0.3, 0.5))
    assert any("tenant mix" in r for r in mixed.override_reasons)
    # Without the cascade the prompt router's own thresholds apply, and nothing is cascaded.
    off = decider(scorers, cascade_enabled=False).decide(TurnText(HARD))
    off_point = learned.floor_point(a, cascade=False)
    assert off.thresholds == (off_point.t1, off_point.t2) and not off.cascade
    assert not off_point.route(a.p_lite, a.p_standard)[1]


def test_the_decider_routes_every_turn_by_its_points_rule(scorers: Any) -> None:
    """The shipped points' rules decide the tier (not the summed score against the same two numbers): over the
    bundled voice turns and the probes, every decision equals its point's FloorPoint.route, and some turns are
    routed differently from what the summed score would give, so reverting the decider to one score fails."""
    from frugal.devkit.routing.probes import few_shot_prompts
    from frugal.router.features import extract_features
    from frugal.router.scoring import tier_index

    learned = scorers.get("learned-v1")
    d = decider(scorers)
    differs = 0
    for text in [x.text for x in load_turns()] + few_shot_prompts():
        a = learned.assess(text, extract_features(text))
        point = learned.floor_point(a, cascade=True)
        got = d.decide(TurnText(text))
        assert got.tier == TIERS[point.route(a.p_lite, a.p_standard)[0]], text
        differs += point.rule == "probs" and tier_index(a.score, (point.t1, point.t2)) != TIERS.index(got.tier)
    assert differs >= 5


def test_short_hard_asks_and_follow_ups_do_not_go_to_lite(scorers: Any) -> None:
    d = decider(scorers)
    assert d.decide(TurnText("Hi there!")).tier == "lite"
    assert d.decide(TurnText("Thanks, that's all.")).tier == "lite"
    hard = d.decide(TurnText(HARD))
    assert hard.tier != "lite" or hard.cascade
    alone = d.decide(TurnText("Why?"))
    follow = d.decide(TurnText("Why?", history=[("user", HARD), ("assistant", "Suppose finitely many...")]))
    assert follow.score >= hard.score - 1e-9 and follow.score > alone.score
    assert any("follow-up" in r for r in follow.override_reasons)
    # A follow-up after an easy turn keeps its own (easy) score.
    after_easy = d.decide(TurnText("Why?", history=[("user", "Hi!"), ("assistant", "Hello!")]))
    assert after_easy.score == pytest.approx(alone.score)
    assert is_follow_up("Why?") and is_follow_up("And the second one?") and not is_follow_up("Why is the sky blue "
                                                                                              "on a clear summer day "
                                                                                              "at noon in June?")


def test_pinned_tier_or_budget_downgrade_turns_the_cascade_off(scorers: Any) -> None:
    d = decider(scorers)
    learned = scorers.get("learned-v1")
    # A turn in a cascade band: a bundled voice turn if one is, else an ARC-style probe (the bands are fitted on
    # RouterBench-like rows, the ones with recorded answers).
    from frugal.devkit.routing.probes import few_shot_prompts

    band = next((t for t in [x.text for x in load_turns()] + few_shot_prompts() if d.decide(TurnText(t)).cascade),
                None)
    assert band is not None, "no turn falls in a cascade band of this artifact: this test would test nothing"
    from frugal.router.features import extract_features

    a = learned.assess(band, extract_features(band))
    assert learned.floor_point(a, cascade=True).route(a.p_lite, a.p_standard)[1]
    routed = d.decide(TurnText(band))
    assert routed.cascade
    tier_enum = {"lite": common_pb2.TIER_LITE, "standard": common_pb2.TIER_STANDARD,
                 "premium": common_pb2.TIER_PREMIUM}[routed.tier]
    # A tenant tier rule, even one that leaves the tier as routed, means no cascade (it would call other tiers).
    # The policies are of an uncapped tenant (monthly_budget_usd -1; 0 would mean suspended, which turns the
    # cascade off on its own), and the same tenant without a tier rule keeps it: only the tier rule differs.
    uncapped = -1.0
    assert d.decide(TurnText(band), policy=billing_pb2.TenantPolicy(monthly_budget_usd=uncapped)).cascade
    for policy in (billing_pb2.TenantPolicy(pinned_tier=tier_enum, monthly_budget_usd=uncapped),
                   billing_pb2.TenantPolicy(max_tier=tier_enum, monthly_budget_usd=uncapped),
                   billing_pb2.TenantPolicy(pinned_tier=common_pb2.TIER_PREMIUM, monthly_budget_usd=uncapped)):
        assert not d.decide(TurnText(band), policy=policy).cascade, policy
    # A capped tenant: well within its budget the cascade runs; near its limit the tier is downgraded and the
    # cascade is off (it would call a tier the budget rule has just taken away).
    capped = billing_pb2.TenantPolicy(monthly_budget_usd=10.0)

    def spent(usd: float) -> billing_pb2.BudgetState:
        state = billing_pb2.BudgetState(month=f"{datetime.now(UTC):%Y-%m}", spent_usd=usd, budget_usd=10.0)
        state.updated_at.GetCurrentTime()
        return state

    assert d.decide(TurnText(band), policy=capped, budget=spent(1.0)).cascade
    low = d.decide(TurnText(band), policy=capped, budget=spent(8.5))
    assert low.budget.status == "downgrade" and low.tier != routed.tier and not low.cascade


def test_a_turn_scored_before_its_context_arrives_gets_the_decision_it_would_get_after(scorers: Any) -> None:
    """Respond scores the turn while rag and vision are fetched, then decides with their sizes: no scorer may
    read the context sizes, and the decision from the early score is the one computed all at once."""
    d = decider(scorers)
    turns = [TurnText("Hi there!"), TurnText(HARD), TurnText("Why?", history=[("user", HARD), ("assistant", "...")])]
    policy = billing_pb2.TenantPolicy(target_mix=common_pb2.TierMix(lite=0.2, standard=0.3, premium=0.5))
    for name in scorers.names:
        for turn in turns:
            for rag_chars, vision_chars in ((0, 0), (6000, 900), (40_000, 0)):
                full = TurnText(turn.text, turn.history, rag_chars, vision_chars)
                for pol in (None, policy):
                    early = d.score(turn.text, turn.history, scorer_name=name)
                    at_once = d.decide(full, scorer_name=name, policy=pol)
                    later = d.decide(full, scorer_name=name, policy=pol, scored=early)
                    assert dataclasses.replace(later, decision_seconds=0) == dataclasses.replace(
                        at_once, decision_seconds=0), (name, turn.text, rag_chars, pol)
                    assert later.features.rag_context_chars == rag_chars
                    assert later.estimated_input_tokens >= (rag_chars + vision_chars) / 4
                # What a scorer reads: the same score with the context sizes in its features as without.
                scorer = scorers.get(name)
                bare = d.score(turn.text, turn.history, scorer_name=name).features
                sized = dataclasses.replace(bare, rag_context_chars=rag_chars, vision_context_chars=vision_chars)
                assert scorer.score(turn.text, sized) == scorer.score(turn.text, bare), name
    early = d.score("Hi there!")
    with pytest.raises(ValueError, match="another turn"):
        d.decide(TurnText(HARD), scored=early)
    with pytest.raises(ValueError, match="another turn"):
        d.decide(TurnText("Hi there!"), scorer_name="heuristic-seed", scored=early)


def test_answer_scorer_features_and_agreement() -> None:
    feats = answer_features("Pick one. A) x B) y\nPrint only a single choice.\nAnswer:", "B", "B", 0.0, 0.0)
    assert len(feats) == len(ANSWER_FEATURES)
    assert dict(zip(ANSWER_FEATURES, feats, strict=True))["same_answer"] == 1.0
    assert agreement("The answer is B", "the answer is b") == 1.0 and agreement("A", "B") == 0.0
    scorer = AnswerScorer(load_learned_payload())
    q = "Question: which gas do plants absorb? A) oxygen B) carbon dioxide\nPrint only a single choice.\nAnswer:"
    assert scorer.probability(q, "B", "B", 0.7, 0.8) > scorer.probability(q, "A", "B", 0.7, 0.8)


# --- fitting reads training rows only -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routing_data() -> list[Dataset]:
    try:
        return load_all()
    except DataMissing as err:
        pytest.skip(f"public routing data missing ({err}); see bench/routing/run.py")


def _fitted(payload: dict[str, Any]) -> dict[str, Any]:
    # Provenance (file digests) aside, everything else is a fitted parameter or a setting.
    return {k: v for k, v in payload.items() if k != "training_data"}


def _flip(d: Dataset, held_out: bool) -> Dataset:
    ex = tuple(dataclasses.replace(e, scores=tuple(1.0 - s for s in e.scores),  # type: ignore[arg-type]
                                   responses=("nonsense", "other", "x")) if e.held_out == held_out else e
               for e in d.examples)
    return dataclasses.replace(d, examples=ex)


def test_evaluation_rows_never_reach_the_training_rows(routing_data: list[Dataset]) -> None:
    """Every fitted value is a function of `training_rows` (fast check; the full rebuild is below)."""
    from frugal.devkit.routing import train_learned

    turns = load_turns()
    flipped_turns = [t if t.calibration else LabelledTurn(t.text, 2 - t.label, t.category) for t in turns]
    base = train_learned.training_rows(routing_data, turns)
    assert base == train_learned.training_rows([_flip(d, True) for d in routing_data], flipped_turns)
    assert base != train_learned.training_rows([_flip(d, False) for d in routing_data], turns)
    groups = {r.group for r in base}
    assert groups == {"llmrouter", "arc-challenge", "mbpp", "winogrande", "conversational"}


@pytest.mark.timeout(2400)  # four full fits; about 6 minutes on an idle machine, much more on a loaded one
def test_artifact_rebuilds_bit_for_bit_and_evaluation_rows_change_no_fitted_parameter(
    routing_data: list[Dataset],
) -> None:
    from frugal.devkit.routing import blas_pin, train_learned

    feat = train_learned.Featurizer()
    base = train_learned.build_payload(routing_data, data_root(), feat)
    turns = load_turns()
    flipped_turns = [t if t.calibration else LabelledTurn(t.text, 2 - t.label, t.category) for t in turns]
    changed_eval = train_learned.build_payload([_flip(d, True) for d in routing_data], data_root(), feat,
                                               turns=flipped_turns)
    assert _fitted(changed_eval) == _fitted(base)
    # The same change on training rows does move the fit (so the comparison above can fail).
    changed_train = train_learned.build_payload([_flip(d, False) for d in routing_data], data_root(), feat)
    assert _fitted(changed_train) != _fitted(base)

    # Bit for bit on the BLAS kernel the artifact was built with (frugal.devkit.routing.blas_pin): the script's
    # own check, in a process that loads OpenBLAS with that kernel.
    env = blas_pin.pinned_env()
    if env is None:
        pytest.skip(f"this CPU cannot run OpenBLAS's {blas_pin.CORETYPE} kernel: no bit-for-bit rebuild here")
    check = subprocess.run([sys.executable, "-m", "frugal.devkit.routing.train_learned", "--check"], env=env,
                           capture_output=True, text=True, timeout=2000, check=False)
    assert check.returncode == 0 and "identical" in check.stdout, (
        f"rebuild differs from the committed file:\n{check.stdout[-2000:]}\n{check.stderr[-2000:]}")


# --- operating-point rule and cross-fitting (revision 2) -----------------------------------------------------


def _synthetic_policy_rows() -> tuple[list[str], Any, Any, Any, Any]:
    """400 'big' rows where lite is as good as premium whatever the score, and 60 'small' rows where lite
    fails on every row; both spread over the same scores (so one pooled threshold cannot tell them apart)."""
    import numpy as np

    rng = np.random.default_rng(7)
    n_big, n_small = 400, 60
    s = rng.uniform(0.0, 2.0, n_big + n_small)
    q = np.ones((n_big + n_small, 3))
    q[n_big:, 0] = 0.0
    q[n_big:, 1] = 0.0
    c = np.tile(np.array([0.1, 0.2, 1.0]), (n_big + n_small, 1))
    cells = ["big"] * n_big + ["small"] * n_small
    return cells, s, np.full(len(s), np.nan), q, c


def test_cluster_floor_holds_for_every_group_cell_not_only_the_pooled_cluster() -> None:
    import numpy as np

    from frugal.devkit.routing.train_learned import FLOOR, fit_policy, route_outcomes

    cells, s, a, q, c = _synthetic_policy_rows()
    one = ["cluster"] * len(s)
    pooled, _ = fit_policy(one, s, a, q, c, FLOOR)
    celled, _ = fit_policy(one, s, a, q, c, FLOOR, cells=cells)
    small = np.array(cells) == "small"
    qp, _, _ = route_outcomes(pooled, s, a, q, c)
    qc, _, _ = route_outcomes(celled, s, a, q, c)
    # Pooled, the small group's failures are averaged away (the cluster as a whole is above the floor)...
    assert qp.mean() >= FLOOR and qp[small].mean() < FLOOR
    # ...held per cell, the small group keeps the floor too.
    assert qc[small].mean() >= FLOOR


def test_prediction_bound_is_stricter_than_the_confidence_bound() -> None:
    import numpy as np

    from frugal.devkit.routing.train_learned import FLOOR, fit_policy, route_outcomes

    rng = np.random.default_rng(3)
    n = 300
    s = rng.uniform(0.0, 1.0, n)
    q = np.ones((n, 3))
    # Lite fails more often the higher the score: the cheapest safe t1 depends on the bound's width.
    q[:, 0] = (rng.uniform(0.0, 1.0, n) > s * 0.5).astype(float)
    q[:, 1] = q[:, 0]
    c = np.tile(np.array([0.1, 0.2, 1.0]), (n, 1))
    a = np.full(n, np.nan)
    g = ["g"] * n
    plain, _ = fit_policy(g, s, a, q, c, FLOOR, bound_factor=1.0)
    strict, _ = fit_policy(g, s, a, q, c, FLOOR, bound_factor=2.0)
    cost = [route_outcomes(p, s, a, q, c)[1].sum() for p in (plain, strict)]
    assert cost[1] > cost[0]


def test_probs_rule_sends_turns_standard_is_sure_of_to_standard_where_one_summed_score_cannot() -> None:
    """Standard answers as well as premium exactly when p_standard is high, whatever p_lite says; lite only when
    p_lite is high. One summed score sends the "standard sure, lite unlikely" turns to premium (or lets lite take
    "lite unsure, standard sure" turns), so at the same floor the probs rule is cheaper; and the run-time
    FloorPoint routes every row as the training code does."""
    import numpy as np

    from frugal.devkit.routing.train_learned import FLOOR, fit_policy, policy_tiers, route_outcomes
    from frugal.router.learned import FloorPoint

    rng = np.random.default_rng(11)
    n = 600
    p_l = rng.uniform(0.0, 1.0, n)
    p_s = rng.uniform(0.0, 1.0, n)
    q = np.ones((n, 3))
    q[:, 0] = (rng.uniform(0.0, 1.0, n) < p_l).astype(float)
    q[:, 1] = (rng.uniform(0.0, 1.0, n) < p_s).astype(float)
    c = np.tile(np.array([0.05, 0.2, 1.0]), (n, 1))
    a = np.full(n, np.nan)
    g = ["g"] * n
    s_sum = 2.0 - p_l - p_s
    summed, _ = fit_policy(g, s_sum, a, q, c, FLOOR)
    probs, _ = fit_policy(g, 1.0 - p_l, a, q, c, FLOOR, u=1.0 - p_s)
    assert probs.rule == "probs" and summed.rule == "score"
    q_sum, c_sum, _ = route_outcomes(summed, s_sum, a, q, c)
    q_pr, c_pr, _ = route_outcomes(probs, 1.0 - p_l, a, q, c, 1.0 - p_s)
    assert q_pr.mean() >= FLOOR * q[:, 2].mean() and q_sum.mean() >= FLOOR * q[:, 2].mean()
    assert c_pr.sum() < 0.9 * c_sum.sum()
    tiers, band = policy_tiers(probs, 1.0 - p_l, 1.0 - p_s)
    point = FloorPoint(probs.t1, probs.t2, probs.t_cascade, probs.answer_keep, probs.rule)
    assert [point.route(float(x), float(y)) for x, y in zip(p_l, p_s, strict=True)] == [
        (int(t_), bool(b_)) for t_, b_ in zip(tiers, band, strict=True)]
    # A point with a band: premium-routed turns with 1 - p_standard <= t_cascade are cascaded, nothing else.
    banded = FloorPoint(0.1, 0.2, 0.4, 0.8, "probs")
    assert banded.route(0.95, 0.1) == (0, False)
    assert banded.route(0.5, 0.85) == (1, False)
    assert banded.route(0.5, 0.7) == (2, True)
    assert banded.route(0.5, 0.5) == (2, False)


def test_lexical_feature_of_a_training_row_does_not_see_the_rows_own_label(routing_data: list[Dataset]) -> None:
    """The lexical model is fitted on the public training prompts: a training row's `lexical` feature comes from
    a model fitted without the row's fold (cross-fitting), so changing the row's scores leaves it unchanged."""
    import numpy as np

    from frugal.devkit.routing import train_learned

    feat = train_learned.Featurizer()
    rows = train_learned.training_rows(routing_data)
    col = train_learned.LEXICAL_COLUMN
    _, extra = feat.matrix([r.text for r in rows])
    crossed = feat.cross_fitted(rows, extra)
    fold0 = np.array([r.group != "conversational" and train_learned.fold_of(r.text) == 0 for r in rows])
    flipped = [dataclasses.replace(r, scores=tuple(1.0 - v for v in r.scores)) if f else r  # type: ignore[arg-type]
               for r, f in zip(rows, fold0, strict=True)]
    again = feat.cross_fitted(flipped, extra)
    assert np.array_equal(again[fold0, col], crossed[fold0, col])
    # The other folds' values do move (their lexical models were fitted on the flipped rows), so this can fail.
    assert not np.array_equal(again[~fold0, col], crossed[~fold0, col])
    # And the shipped (in-sample) value differs from the cross-fitted one: the column really is replaced.
    assert not np.allclose(extra[fold0, col], crossed[fold0, col])


def test_a_cascade_band_only_where_the_training_rows_carry_answers() -> None:
    """The band is fitted on rows with the cheap models' recorded answers (RouterBench); a cluster made mostly of
    rows without (llmrouter, voice turns) ships no band, so those turns are never cascaded under a band fitted on
    a handful of rows. Also: every group with >= 10% of its rows in a cluster is a floor cell there."""
    import numpy as np

    from frugal.devkit.routing.train_learned import _cascade_supported

    assert not _cascade_supported(np.array([np.nan] * 60 + [0.5] * 40))
    assert not _cascade_supported(np.array([0.5] * 20))
    assert _cascade_supported(np.array([np.nan] * 40 + [0.5] * 60))
    payload = load_learned_payload()
    with_answers = {"arc-challenge", "mbpp", "winogrande"}
    for cl in payload["operating_points"]["clusters"]:
        rows = cl["rows_by_group"]
        answered = sum(n for g, n in rows.items() if g in with_answers)
        if 2 * answered < sum(rows.values()):
            empty = cl["floor"]["t2"] if cl["floor"].get("rule_kind") == "probs" else cl["floor"]["t1"]
            assert cl["floor"]["t_cascade"] == empty, cl["name"]
    assert payload["revision"] == 3
