"""Difficulty scorers and the calibration of tier thresholds from a target mix.

Three scorers:
- `heuristic-seed`: the seed product's 0-18 point keyword scorer, reproduced faithfully (our baseline);
- `lexical-ridge-v1`: a linear model over word unigrams/bigrams of the turn and the seed's features, fitted
  by ridge regression on public routing data (benchmark prompts) to predict how much quality a turn gains
  from a stronger model (see frugal.devkit.routing.train_hybrid and bench/routing). It ranks benchmark prompts well and
  ordinary voice turns badly (a greeting above a multi-part design question);
- `hybrid-v2` (the default): a linear model over conversational-structure features
  (frugal.router.conversational), fitted on the calibration split of our labelled conversational turns,
  plus `lambda` x the standardized `lexical-ridge-v1` score (so the public-data knowledge is kept).
The weights are one committed JSON artifact (`scorer-hybrid-v2.json`, which embeds the lexical model)
verified against a SHA-256 sidecar at load time; a corrupt artifact refuses to load. The older
`scorer-lexical-ridge-v1.json` artifact still loads through SCORER_ARTIFACT_PATH (lexical + seed only).

Both are pure functions of the turn's text: the same input gives the same score, no randomness. Scores are
mapped to tiers by two thresholds: lite if score <= t1, standard if score <= t2, premium otherwise. The
thresholds come from a target mix (e.g. 60/25/15): they are the mix's quantiles of the scores of a reference
sample of traffic, stored as a quantile table per scorer, so the hardest turns go highest.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from frugal.router.conversational import STRUCTURE_FEATURES, structure_features
from frugal.router.features import TurnFeatures, extract_features

# The learned router (frugal.router.learned) decides by default; hybrid-v2 and the seed stay selectable by name.
DEFAULT_SCORER = "learned-v1"
HYBRID_SCORER = "hybrid-v2"
LEXICAL_SCORER = "lexical-ridge-v1"
SEED_SCORER = "heuristic-seed"
ARTIFACT_FILE = "scorer-hybrid-v2.json"
LEXICAL_ARTIFACT_FILE = "scorer-lexical-ridge-v1.json"
ARTIFACT_FORMAT = "frugal-router-scorer/1"
QUANTILE_POINTS = 1001


class ScorerError(ValueError):
    """Unknown scorer name, or an artifact that is missing, corrupt or of the wrong format."""


@dataclass(frozen=True, slots=True)
class TierMix:
    lite: float
    standard: float
    premium: float

    def __post_init__(self) -> None:
        parts = (self.lite, self.standard, self.premium)
        if any(p < 0 or p > 1 or math.isnan(p) for p in parts):
            raise ValueError(f"tier mix shares must be in [0, 1], got {parts}")
        if not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
            raise ValueError(f"tier mix shares must sum to 1, got {sum(parts):.6f}")

    @classmethod
    def parse(cls, text: str) -> TierMix:
        """'60/25/15' or '0.6,0.25,0.15' (percentages or fractions)."""
        parts = [p for p in re.split(r"[/,:\s]+", text.strip()) if p]
        if len(parts) != 3:
            raise ValueError(f"tier mix {text!r}: expected three shares, lite/standard/premium (e.g. 60/25/15)")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"tier mix {text!r}: shares must be numbers") from None
        total = sum(values)
        if total <= 0:
            raise ValueError(f"tier mix {text!r}: shares must not all be zero")
        if math.isclose(total, 100.0, abs_tol=1e-6):
            values = [v / 100 for v in values]
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.lite * 100:g}/{self.standard * 100:g}/{self.premium * 100:g}"


class QuantileTable:
    """Quantiles of a scorer's scores on a reference sample; maps a target mix to thresholds."""

    def __init__(self, values: Sequence[float], *, sample: str, n: int) -> None:
        if len(values) < 2 or any(b < a for a, b in zip(values, values[1:], strict=False)):
            raise ScorerError("quantile table must have at least 2 non-decreasing values")
        self.values = tuple(float(v) for v in values)
        self.sample = sample
        self.n = n

    @classmethod
    def from_scores(cls, scores: Iterable[float], *, sample: str, points: int = QUANTILE_POINTS) -> QuantileTable:
        ordered = sorted(scores)
        if not ordered:
            raise ScorerError("reference sample is empty")
        n = len(ordered)
        values = []
        for i in range(points):
            # Linear interpolation between order statistics (numpy's default "linear" method).
            pos = (n - 1) * i / (points - 1)
            lo = math.floor(pos)
            hi = min(lo + 1, n - 1)
            values.append(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
        return cls(values, sample=sample, n=n)

    def quantile(self, q: float) -> float:
        q = min(max(q, 0.0), 1.0)
        pos = q * (len(self.values) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(self.values) - 1)
        return self.values[lo] + (self.values[hi] - self.values[lo]) * (pos - lo)

    def thresholds(self, mix: TierMix) -> tuple[float, float]:
        """(t1, t2): lite below-or-at t1, standard up to t2, premium above. A share of 0 puts its threshold
        below every reference score (lite) or above every one (premium)."""
        below_all = self.values[0] - 1.0
        above_all = self.values[-1] + 1.0
        t1 = below_all if mix.lite <= 0 else (above_all if mix.lite >= 1 else self.quantile(mix.lite))
        upper = mix.lite + mix.standard
        t2 = below_all if upper <= 0 else (above_all if upper >= 1 - 1e-9 else self.quantile(upper))
        return t1, max(t1, t2)

    def rank(self, score: float) -> float:
        """Fraction of the reference sample scoring at or below `score`."""
        return bisect.bisect_right(self.values, score) / len(self.values)


def tier_index(score: float, thresholds: tuple[float, float]) -> int:
    """0 lite, 1 standard, 2 premium."""
    t1, t2 = thresholds
    if score <= t1:
        return 0
    if score <= t2:
        return 1
    return 2


class Scorer(Protocol):
    name: str
    reference: QuantileTable

    def score(self, text: str, features: TurnFeatures) -> float: ...


class SeedHeuristicScorer:
    """The seed's `estimate_complexity` points (0-18), computed the way its README shows:

    length 0-3 (<50, <200, <500 chars), technical terms min(count, 3), '?' count min(n, 2), any reasoning
    keyword +3, code markers +4, any data keyword +3. Its fixed cut-offs (<=5 simple, <=11 moderate) are
    kept as `NATIVE_THRESHOLDS` for comparison; in the service, thresholds come from the target mix like any
    scorer's. The seed's weighted-random model choice is not reproduced (a known defect).
    """

    name = SEED_SCORER
    NATIVE_THRESHOLDS = (5.0, 11.0)

    def __init__(self, reference: QuantileTable) -> None:
        self.reference = reference

    @staticmethod
    def points(features: TurnFeatures) -> int:
        n = features.length_chars
        score = 0 if n < 50 else 1 if n < 200 else 2 if n < 500 else 3
        score += min(features.technical_terms, 3)
        score += min(features.question_count, 2)
        score += 3 if features.reasoning_terms else 0
        score += 4 if features.has_code else 0
        score += 3 if features.data_terms else 0
        return score

    def score(self, text: str, features: TurnFeatures) -> float:
        return float(self.points(features))


# Tokens of the lexical model: lowercase letter runs, digit runs, and single punctuation characters, over
# the first MAX_CHARS characters (long prompts are classified by their beginning).
TOKEN_RE = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")
MAX_CHARS = 2000
NUMERIC_FEATURES = (
    "log_chars", "log_words", "questions", "has_code", "technical_terms", "reasoning_terms", "data_terms",
    "sqrt_newlines", "digit_ratio",
)


# Function words and common punctuation are not features on their own (bigrams keep them when paired with a
# content word): in the benchmark data they mostly encode each data set's prompt template, not difficulty,
# and they made chit-chat ("thanks, that's all") look hard. Cross-validated cost cut: 0.545 with this filter,
# 0.555 without (frugal.devkit.routing.train_hybrid --select), i.e. the same within noise.
STOPWORDS = frozenset(
    """a an the and or but if of to in on at for from by with about as is are was were be been being do does did
    what which who whom whose when where why how can could should would will shall may might must i you he she it
    we they me my your our their this that these those there here s t not no yes so than then too very just also
    all any some each other such only own same few more most into over under again further once , . ' ? ! : ; "
    -""".split()
)


def lexical_tokens(text: str) -> set[str]:
    toks = TOKEN_RE.findall(text[:MAX_CHARS].lower())
    out = {t for t in toks if t not in STOPWORDS}
    out.update(f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False) if a not in STOPWORDS or b not in STOPWORDS)
    return out


def numeric_features(text: str, features: TurnFeatures) -> list[float]:
    head = text[:MAX_CHARS]
    digits = sum(1 for c in head if c.isdigit())
    return [
        math.log1p(features.length_chars),
        math.log1p(features.word_count),
        float(min(features.question_count, 5)),
        1.0 if features.has_code else 0.0,
        float(features.technical_terms),
        float(features.reasoning_terms),
        float(features.data_terms),
        math.sqrt(text.count("\n")),
        digits / max(1, len(head)),
    ]


class LexicalRidgeScorer:
    """score = bias + sum(token weights) / sqrt(#known tokens) + standardized numeric features . weights.

    Higher means a stronger model is expected to gain more on this turn (fitted target: see `target`)."""

    def __init__(self, payload: dict[str, Any], reference: QuantileTable | None = None) -> None:
        try:
            self.name = str(payload["name"])
            self.bias = float(payload["bias"])
            self.token_weights: dict[str, float] = {str(k): float(v) for k, v in payload["tokens"].items()}
            numeric = payload["numeric"]
            if list(numeric["names"]) != list(NUMERIC_FEATURES):
                raise ScorerError(f"artifact numeric features {numeric['names']} != {list(NUMERIC_FEATURES)}")
            self.mean = [float(v) for v in numeric["mean"]]
            self.std = [float(v) for v in numeric["std"]]
            self.numeric_weights = [float(v) for v in numeric["weights"]]
            self.target = str(payload.get("target", ""))
            ref = payload["reference"]
            self.reference = reference or QuantileTable(
                ref["quantiles"][self.name], sample=str(ref["sample"]), n=int(ref["n"])
            )
            self.seed_reference = QuantileTable(
                ref["quantiles"][SEED_SCORER], sample=str(ref["sample"]), n=int(ref["n"])
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, ScorerError):
                raise
            raise ScorerError(f"scorer artifact is malformed: {err!r}") from err
        if not (len(self.mean) == len(self.std) == len(self.numeric_weights) == len(NUMERIC_FEATURES)):
            raise ScorerError("scorer artifact numeric arrays have the wrong length")
        self.metadata = {k: v for k, v in payload.items() if k not in ("tokens", "reference")}

    def score(self, text: str, features: TurnFeatures) -> float:
        total = 0.0
        known = 0
        weights = self.token_weights
        for tok in lexical_tokens(text):
            w = weights.get(tok)
            if w is not None:
                total += w
                known += 1
        s = self.bias + (total / math.sqrt(known) if known else 0.0)
        for x, mu, sd, w in zip(numeric_features(text, features), self.mean, self.std, self.numeric_weights,
                                strict=True):
            s += (x - mu) / sd * w
        return s


class HybridScorer:
    """score = structure bias + standardized structure features . weights + lambda * (lexical - mu) / sd.

    The structure part is fitted to the difficulty labels (0/1/2) of the conversational calibration split; the
    lexical part is `lexical-ridge-v1`, standardized by its mean and spread on the public training prompts."""

    def __init__(self, payload: dict[str, Any], lexical: LexicalRidgeScorer,
                 reference: QuantileTable | None = None) -> None:
        try:
            self.name = str(payload["name"])
            structure = payload["structure"]
            if list(structure["names"]) != list(STRUCTURE_FEATURES):
                raise ScorerError(f"artifact structure features {structure['names']} != {list(STRUCTURE_FEATURES)}")
            self.mean = [float(v) for v in structure["mean"]]
            self.std = [float(v) for v in structure["std"]]
            self.weights = [float(v) for v in structure["weights"]]
            self.bias = float(structure["bias"])
            self.lam = float(payload["lambda"])
            self.lexical_mean = float(payload["lexical_scale"]["mean"])
            self.lexical_std = float(payload["lexical_scale"]["std"])
            ref = payload["reference"]
            self.reference = reference or QuantileTable(
                ref["quantiles"][self.name], sample=str(ref["sample"]), n=int(ref["n"])
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, ScorerError):
                raise
            raise ScorerError(f"scorer artifact is malformed: {err!r}") from err
        if not (len(self.mean) == len(self.std) == len(self.weights) == len(STRUCTURE_FEATURES)):
            raise ScorerError("scorer artifact structure arrays have the wrong length")
        if self.lexical_std <= 0 or any(sd <= 0 for sd in self.std):
            raise ScorerError("scorer artifact has a non-positive standard deviation")
        self.lexical = lexical

    def structure_score(self, text: str) -> float:
        s = self.bias
        for x, mu, sd, w in zip(structure_features(text), self.mean, self.std, self.weights, strict=True):
            s += (x - mu) / sd * w
        return s

    def score(self, text: str, features: TurnFeatures) -> float:
        z = (self.lexical.score(text, features) - self.lexical_mean) / self.lexical_std
        return self.structure_score(text) + self.lam * z


def artifact_bytes(path: str | Path | None = None) -> tuple[bytes, str | None, str]:
    """(artifact bytes, expected sha256 from the sidecar or None if missing, source description)."""
    if path is None:
        root = resources.files("frugal.router").joinpath("data")
        data = root.joinpath(ARTIFACT_FILE).read_bytes()
        sidecar = root.joinpath(ARTIFACT_FILE + ".sha256")
        expected = sidecar.read_text().split()[0] if sidecar.is_file() else None
        return data, expected, f"bundled {ARTIFACT_FILE}"
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ScorerError(f"scorer artifact {p}: {err.strerror}") from err
    side = p.with_name(p.name + ".sha256")
    expected = side.read_text().split()[0] if side.is_file() else None
    return data, expected, str(p)


def verify_artifact(data: bytes, expected: str | None, source: str, *, what: str, fmt: str,
                    error: type[Exception]) -> dict[str, Any]:
    """The shipped-artifact rule (shared by every scorer artifact): the file's SHA-256 must match its sidecar,
    it must be a JSON object of format `fmt`; otherwise `error` naming `what` and `source`."""
    if expected is None:
        raise error(f"{what} {source}: no .sha256 sidecar; refusing an unverified artifact")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise error(f"{what} {source} is corrupt: sha256 {actual[:16]}... != expected {expected[:16]}...")
    try:
        payload = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {source}: not JSON ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise error(f"{what} {source}: format is not {fmt}")
    return payload


def load_artifact(path: str | Path | None = None) -> dict[str, Any]:
    """Reads and verifies the artifact: SHA-256 of the file must match its sidecar; format must match."""
    data, expected, source = artifact_bytes(path)
    return verify_artifact(data, expected, source, what="scorer artifact", fmt=ARTIFACT_FORMAT, error=ScorerError)


@dataclass(frozen=True)
class ScorerSet:
    scorers: dict[str, Scorer]
    default: str

    def get(self, name: str) -> Scorer:
        key = name or self.default
        try:
            return self.scorers[key]
        except KeyError:
            raise ScorerError(f"unknown scorer {name!r}; available: {', '.join(sorted(self.scorers))}") from None

    @property
    def names(self) -> list[str]:
        return sorted(self.scorers)


def load_learned(lexical: LexicalRidgeScorer, hybrid: HybridScorer, path: str | Path | None = None) -> Scorer:
    """`learned-v1` (frugal.router.learned) on the shared MiniLM encoder; the artifact's checksum and the
    encoder's embedding table digest are both checked."""
    from frugal.router.learned import LearnedArtifactError, LearnedScorer, MiniLMTailEmbedder, load_learned_payload

    try:
        payload = load_learned_payload(path)
        embedder = MiniLMTailEmbedder()
        expected = str(payload.get("model", {}).get("encoder_table_sha256", ""))
        if expected != embedder.table_digest():
            raise ScorerError("learned artifact was fitted on a different encoder embedding table "
                              f"({expected[:16]}... != {embedder.table_digest()[:16]}...)")

        def base(text: str, features: TurnFeatures) -> tuple[float, float]:
            return lexical.score(text, features), hybrid.score(text, features)

        return LearnedScorer(payload, embedder, base)
    except LearnedArtifactError as err:
        raise ScorerError(str(err)) from err


def load_scorers(
    artifact_path: str | Path | None = None,
    *,
    default: str = DEFAULT_SCORER,
    reference_texts: Sequence[str] | None = None,
    reference_name: str = "custom reference sample",
    learned: bool = True,
    learned_artifact_path: str | Path | None = None,
) -> ScorerSet:
    """Loads the scorer artifact (verified): `hybrid-v2` with the `lexical-ridge-v1` model it embeds, and the
    seed heuristic. An older `lexical-ridge-v1` artifact gives that scorer and the seed heuristic only.

    With `reference_texts`, every scorer's thresholds are calibrated on those turns instead of the bundled
    reference sample (the calibration split of the conversational turns for `scorer-hybrid-v2.json`; the
    training split of the public routing data for the older lexical artifact)."""
    payload = load_artifact(artifact_path)
    scorers: dict[str, Scorer] = {}
    if "structure" in payload:
        if not isinstance(payload.get("lexical"), dict):
            raise ScorerError("scorer artifact is malformed: no embedded lexical model")
        lexical = LexicalRidgeScorer({**payload["lexical"], "reference": payload.get("reference")})
        hybrid = HybridScorer(payload, lexical)
        scorers[hybrid.name] = hybrid
        if learned:
            learned_scorer = load_learned(lexical, hybrid, learned_artifact_path)
            scorers[learned_scorer.name] = learned_scorer
    else:
        lexical = LexicalRidgeScorer(payload)
    seed = SeedHeuristicScorer(lexical.seed_reference)
    scorers[lexical.name] = lexical
    scorers[seed.name] = seed
    if reference_texts is not None:
        feats = [extract_features(t) for t in reference_texts]
        for s in scorers.values():
            s.reference = QuantileTable.from_scores(
                (s.score(t, f) for t, f in zip(reference_texts, feats, strict=True)), sample=reference_name
            )
    if default not in scorers:
        raise ScorerError(f"default scorer {default!r} unknown; available: {', '.join(sorted(scorers))}")
    return ScorerSet(scorers=scorers, default=default)


def read_reference_sample(path: str | Path) -> list[str]:
    """A file of turns: JSON Lines with a "text" field, or plain text with one turn per line."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ScorerError(f"reference sample {p}: {err.strerror}") from err
    texts: list[str] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                texts.append(str(obj["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ScorerError(f"reference sample {p}:{lineno}: expected JSON with a 'text' field ({err})") from err
        else:
            texts.append(line)
    if len(texts) < 20:
        raise ScorerError(f"reference sample {p}: {len(texts)} turns; need at least 20 to calibrate thresholds")
    return texts
