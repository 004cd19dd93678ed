"""Probe prompts for tests: multiple-choice questions in the ARC-Challenge format of the public routing data (a
few-shot prefix of answered questions, then the question), written by us. The learned router's cascade band is
fitted where the training rows carry the cheap models' answers (RouterBench-like traffic), so tests that need a
turn in the band use these rather than voice turns."""

from __future__ import annotations

ASK = 'Print only a single choice  from "A" or "B" or "C" or "D" without explanation.\nAnswer:'
SHOTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Which tool is best for measuring the mass of a rock?",
     ("a ruler", "a balance", "a thermometer", "a graduated cylinder"), "B"),
    ("A student drops a ball from a table. Which force pulls the ball toward the floor?",
     ("friction", "magnetism", "gravity", "tension"), "C"),
    ("Which part of a plant takes in water from the soil?", ("roots", "leaves", "flowers", "seeds"), "A"),
    ("What happens to water when it freezes?",
     ("it becomes a gas", "it becomes a solid", "it loses mass", "it gains mass"), "B"),
)
QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Which process moves heat from the Sun to the Earth through empty space?",
     ("conduction", "convection", "radiation", "evaporation")),
    ("Which of these is a chemical change?", ("melting ice", "cutting paper", "burning wood", "dissolving sugar")),
)


def _block(question: str, options: tuple[str, ...], answer: str = "") -> str:
    text = question + "\n" + "\n".join(f"{k}) {o}" for k, o in zip("ABCD", options, strict=False)) + "\n" + ASK
    return text + ("\n" + answer if answer else "")


def few_shot_prompts() -> list[str]:
    prefix = "\n\n".join(_block(q, o, a) for q, o, a in SHOTS)
    return [prefix + "\n\n" + _block(q, o) for q, o in QUESTIONS]
