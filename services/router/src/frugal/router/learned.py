"""`learned-v1`: a learned prompt router (run-time part; training is `frugal.devkit.routing.train_learned`).

Per turn it predicts, for the lite and the standard tier, the probability that the tier answers as well as
premium (RouteLLM's "win" classifiers, one logistic regression per tier), from
- what the turn says: the mean of all-MiniLM-L6-v2's token embeddings over the *tail* of the turn (the last
  `TAIL_TOKENS` word pieces of the last `TAIL_CHARS` characters). The tail, because benchmark prompts open with
  a shared few-shot prefix (ARC and Winogrande: ~450 identical tokens) and the question is at the end; the
  input embeddings, not the 6-layer forward pass, because the forward pass costs 9-50 ms per turn on one core
  here (bench/router) and the decision budget is 3 ms p50 / 10 ms p99. The encoder is the shared one
  (`frugal.encoder.minilm.load_token_embeddings`): its tokenizer and embedding table, not a copy;
- structure: the conversational-structure features (frugal.router.conversational), the lexical model's
  numeric features, and the `lexical-ridge-v1` and `hybrid-v2` scores. Both scores are themselves fitted on
  training rows (the lexical model on the public training prompts, hybrid-v2's structure part on the
  conversational calibration turns), so training uses them *cross-fitted* (each training row scored by models
  fitted without the row's fold), as they are on a new turn at run time: in-sample they are far more
  predictive than on new turns (the lexical score's AUC for "lite fails" is 0.83 in-sample vs 0.63
  cross-fitted on llmrouter, about 0.65 vs 0.48 on the RouterBench tasks), and a router fitted on in-sample
  values over-trusts them and routes held-out prompts too low;
- the conversation: a follow-up ("Why?", "and the second one?") is scored as hard as the user turn it follows
  when that one was harder (`is_follow_up`).

The difficulty score is `2 - p_lite - p_standard` (0: both cheaper tiers expected to match premium; 2: neither).
Operating points fitted on training data and shipped in the artifact:
- `floor`: thresholds (t1, t2, t_cascade, answer_keep) chosen so that the routed quality, cascade included,
  stays >= the quality floor (95% of premium by default) on every training group's out-of-fold predictions at
  the lowest cost; this is the default;
- `floor_prompt_only`: the same rule for the prompt router alone (used when the cascade is off);
- `clusters`: the same two points fitted per cluster of training traffic (cluster-based routing, as in
  RouterBench's and UniRoute's cluster routers): one cluster per training group (llmrouter, each RouterBench
  task, the conversational turns); a one-vs-rest logistic group classifier on the same features picks a turn's
  cluster. One pooled threshold has to satisfy the hardest group and over-pays everywhere else;
- `mix`: a quantile table on the reference sample (the conversational calibration split), so a target mix
  (60/25/15, or a tenant's) maps to thresholds like the other scorers.
A point's tier rule (`FloorPoint`, fitted per point in training): "score" (the score against t1 <= t2) or
"probs" (each cheaper tier on its own probability: lite if p_lite is high enough, else standard if p_standard
is, else premium; one summed score sends a turn standard is sure to handle to premium whenever lite is
unlikely to). Turns in the point's cascade band are the ones it is unsure about: the cascade
(frugal.router.cascade) has lite and standard answer first and keeps standard's answer only when the answer
scorer accepts it.

The artifact (`learned-v1.json`) is small JSON (rounded floats, sorted keys), rebuilt bit for bit by
`python -m frugal.devkit.routing.train_learned`, and verified against its `.sha256` sidecar at load.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from frugal.router.conversational import STRUCTURE_FEATURES, structure_features
from frugal.router.features import TurnFeatures, extract_features
from frugal.router.scoring import verify_artifact

LEARNED_SCORER = "learned-v1"
LEARNED_ARTIFACT_FILE = "learned-v1.json"
LEARNED_FORMAT = "frugal-router-learned/1"
TAIL_CHARS = 800
TAIL_TOKENS = 128
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class LearnedArtifactError(ValueError):
    """The learned router's artifact is missing, corrupt, unverified or of the wrong shape."""


class TokenEmbedder(Protocol):
    def tail_vector(self, text: str) -> F32: ...


class MiniLMTailEmbedder:
    """Mean of all-MiniLM-L6-v2 input token embeddings over the tail of the text, L2-normalised."""

    def __init__(self) -> None:
        from frugal.encoder.minilm import load_token_embeddings

        enc = load_token_embeddings()
        self.tokenizer = enc.tokenizer
        self.table: F32 = enc.word
        self.dim = int(self.table.shape[1])

    def table_digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.table).tobytes()).hexdigest()

    def token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text[-TAIL_CHARS:]).ids
        return list(ids[1:-1][-TAIL_TOKENS:])  # drop [CLS]/[SEP]

    def tail_vector(self, text: str) -> F32:
        ids = self.token_ids(text)
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        v = self.table[ids].mean(axis=0)
        n = float(np.linalg.norm(v))
        out: F32 = (v / n if n > 0 else v).astype(np.float32, copy=False)
        return out


# Turn-level numeric features beside the embedding (order matters: the artifact stores their names).
EXTRA_FEATURES: tuple[str, ...] = (
    *(f"structure:{n}" for n in STRUCTURE_FEATURES),
    "log_chars", "log_tail_words", "questions", "has_code", "newlines_sqrt", "digit_ratio", "lexical", "hybrid",
)

_FOLLOW_UP_START = re.compile(
    r"^(why|how come|and\b|but\b|so\b|then\b|what about|how about|really|are you sure|explain|elaborate|go on|"
    r"more\b|continue|which one|the (first|second|third|last) one|what do you mean|can you (expand|elaborate)|"
    r"how so|in what way|what if)",
    re.IGNORECASE,
)


def is_follow_up(text: str) -> bool:
    """A short turn that leans on the previous one ("Why?", "And the second one?", "What if it fails?")."""
    words = text.split()
    return 0 < len(words) <= 8 and bool(_FOLLOW_UP_START.match(text.strip()))


class BaseScores(Protocol):
    """The `lexical-ridge-v1` and `hybrid-v2` scores of a turn."""

    def __call__(self, text: str, features: TurnFeatures) -> tuple[float, float]: ...


def extra_features(text: str, features: TurnFeatures, lexical: float, hybrid: float) -> list[float]:
    tail = text[-TAIL_CHARS:]
    digits = sum(1 for c in tail if c.isdigit())
    return [
        *structure_features(tail),
        math.log1p(features.length_chars),
        math.log1p(len(tail.split())),
        float(min(tail.count("?"), 5)),
        1.0 if features.has_code else 0.0,
        math.sqrt(min(text.count("\n"), 400)),
        digits / max(1, len(tail)),
        lexical,
        hybrid,
    ]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True, slots=True)
class FloorPoint:
    """One shipped operating point. Rule "score": lite if score <= t1, standard if <= t2, else premium, cascade
    band (t1, t_cascade]. Rule "probs" (each tier on its own probability): lite if 1 - p_lite <= t1, else
    standard if 1 - p_standard <= t2, else premium; cascade band: premium-routed turns with
    1 - p_standard <= t_cascade."""

    t1: float
    t2: float
    t_cascade: float
    answer_keep: float = 1.0
    rule: str = "score"

    @classmethod
    def parse(cls, point: dict[str, Any], *, cascade: bool) -> FloorPoint:
        rule = str(point.get("rule_kind", "score"))
        if rule not in ("score", "probs"):
            raise LearnedArtifactError(f"unknown operating point rule {rule!r}")
        t1, t2 = float(point["t1"]), float(point["t2"])
        no_band = t2 if rule == "probs" else t1
        fp = cls(t1, t2, float(point["t_cascade"]) if cascade else no_band,
                 float(point["answer_keep"]) if cascade else 1.0, rule)
        if rule == "score" and not (fp.t1 <= fp.t2 and fp.t_cascade >= fp.t1):
            raise LearnedArtifactError("learned artifact thresholds are out of order")
        if rule == "probs" and fp.t_cascade < fp.t2:
            raise LearnedArtifactError("learned artifact cascade band is out of order")
        return fp

    def route(self, p_lite: float, p_standard: float) -> tuple[int, bool]:
        """(tier index, in the cascade band)."""
        if self.rule == "probs":
            if 1.0 - p_lite <= self.t1:
                return 0, False
            u = 1.0 - p_standard
            if u <= self.t2:
                return 1, False
            return 2, u <= self.t_cascade
        s = 2.0 - p_lite - p_standard
        tier = 0 if s <= self.t1 else 1 if s <= self.t2 else 2
        return tier, self.t1 < s <= self.t_cascade


@dataclass(frozen=True, slots=True)
class Assessment:
    p_lite: float
    p_standard: float
    score: float
    follow_up_of: str | None = None
    # Index of the nearest cluster (its operating point applies); -1 when the artifact has none.
    cluster: int = -1


class LearnedScorer:
    """Logistic regressions on [tail embedding, standardized extra features]; see the module docstring."""

    name = LEARNED_SCORER

    def __init__(self, payload: dict[str, Any], embedder: TokenEmbedder, base: BaseScores) -> None:
        from frugal.router.scoring import QuantileTable

        try:
            model = payload["model"]
            if list(model["extra_names"]) != list(EXTRA_FEATURES):
                raise LearnedArtifactError(f"artifact features {model['extra_names']} != {list(EXTRA_FEATURES)}")
            self.mean = np.asarray(model["extra_mean"], dtype=np.float64)
            self.std = np.asarray(model["extra_std"], dtype=np.float64)
            self.w_lite = np.asarray(model["lite"]["weights"], dtype=np.float64)
            self.b_lite = float(model["lite"]["bias"])
            self.w_std = np.asarray(model["standard"]["weights"], dtype=np.float64)
            self.b_std = float(model["standard"]["bias"])
            self.dim = int(model["embedding_dim"])
            op = payload["operating_points"]
            self.floor = float(op["floor"]["quality_floor"])
            self.pooled_floor = FloorPoint.parse(op["floor"], cascade=True)
            self.pooled_prompt_only = FloorPoint.parse(op["floor_prompt_only"], cascade=False)
            clusters = op.get("clusters") or []
            self.cluster_names = [str(cl["name"]) for cl in clusters]
            self.cluster_w = (np.asarray([cl["classifier"]["weights"] for cl in clusters], dtype=np.float64)
                              if clusters else np.zeros((0, 1)))
            self.cluster_b = np.asarray([float(cl["classifier"]["bias"]) for cl in clusters], dtype=np.float64)
            self.cluster_floor = [FloorPoint.parse(cl["floor"], cascade=True) for cl in clusters]
            self.cluster_prompt_only = [FloorPoint.parse(cl["floor_prompt_only"], cascade=False) for cl in clusters]
            ref = op["mix"]
            self.reference = QuantileTable(ref["quantiles"], sample=str(ref["sample"]), n=int(ref["n"]))
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, LearnedArtifactError):
                raise
            raise LearnedArtifactError(f"learned artifact is malformed: {err!r}") from err
        n = self.dim + len(EXTRA_FEATURES)
        if not (len(self.mean) == len(self.std) == len(EXTRA_FEATURES)) or len(self.w_lite) != n or len(
            self.w_std
        ) != n:
            raise LearnedArtifactError("learned artifact arrays have the wrong length")
        if len(self.cluster_names) and self.cluster_w.shape != (len(self.cluster_names), n):
            raise LearnedArtifactError("learned artifact cluster classifiers have the wrong shape")
        if np.any(self.std <= 0):
            raise LearnedArtifactError("learned artifact has a non-positive standard deviation")
        self._embedder = embedder
        self._base = base
        self.metadata = {k: v for k, v in payload.items() if k not in ("model",)}
        # The cascade's answer scorer reads its part of the same verified artifact.
        self.payload_for_cascade = {"answer_scorer": payload.get("answer_scorer"), "operating_points": op}

    def _assess_one(self, text: str, features: TurnFeatures) -> Assessment:
        emb = self._embedder.tail_vector(text)
        lexical, hybrid = self._base(text, features)
        extra = (np.asarray(extra_features(text, features, lexical, hybrid), dtype=np.float64) - self.mean) / self.std
        x = np.concatenate([emb.astype(np.float64), extra])
        p_l = _sigmoid(float(x @ self.w_lite) + self.b_lite)
        p_s = _sigmoid(float(x @ self.w_std) + self.b_std)
        cluster = int(np.argmax(self.cluster_w @ x + self.cluster_b)) if len(self.cluster_names) else -1
        return Assessment(p_l, p_s, 2.0 - p_l - p_s, cluster=cluster)

    def probabilities(self, text: str, features: TurnFeatures) -> tuple[float, float]:
        a = self._assess_one(text, features)
        return a.p_lite, a.p_standard

    def assess(self, text: str, features: TurnFeatures, history: Sequence[tuple[str, str]] = ()) -> Assessment:
        own = self._assess_one(text, features)
        prev = next((t for r, t in reversed(history) if r == "user" and t.strip()), None)
        if prev is not None and is_follow_up(text):
            before = self._assess_one(prev, extract_features(prev))
            if before.score > own.score:
                return Assessment(before.p_lite, before.p_standard, before.score, follow_up_of=prev[:80],
                                  cluster=before.cluster)
        return own

    def floor_point(self, a: Assessment, *, cascade: bool) -> FloorPoint:
        """The operating point of the turn's cluster (or the pooled one); without the cascade, the prompt
        router's own point, whose band is empty."""
        if a.cluster >= 0:
            return self.cluster_floor[a.cluster] if cascade else self.cluster_prompt_only[a.cluster]
        return self.pooled_floor if cascade else self.pooled_prompt_only

    def answer_keep(self, a: Assessment) -> float | None:
        """The cluster's answer-scorer threshold (None: the pooled one)."""
        return self.cluster_floor[a.cluster].answer_keep if a.cluster >= 0 else None

    def score(self, text: str, features: TurnFeatures) -> float:
        return self.assess(text, features).score


def learned_artifact_bytes(path: str | Path | None = None) -> tuple[bytes, str | None, str]:
    if path is None:
        root = resources.files("frugal.router").joinpath("data")
        data = root.joinpath(LEARNED_ARTIFACT_FILE).read_bytes()
        side = root.joinpath(LEARNED_ARTIFACT_FILE + ".sha256")
        return data, (side.read_text().split()[0] if side.is_file() else None), f"bundled {LEARNED_ARTIFACT_FILE}"
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise LearnedArtifactError(f"learned artifact {p}: {err.strerror}") from err
    side = p.with_name(p.name + ".sha256")
    return data, (side.read_text().split()[0] if side.is_file() else None), str(p)


def load_learned_payload(path: str | Path | None = None) -> dict[str, Any]:
    """Reads and verifies the artifact (SHA-256 sidecar, format)."""
    data, expected, source = learned_artifact_bytes(path)
    return verify_artifact(data, expected, source, what="learned artifact", fmt=LEARNED_FORMAT,
                           error=LearnedArtifactError)
