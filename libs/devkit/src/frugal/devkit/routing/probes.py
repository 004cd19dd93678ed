"""Probe prompts for tests: multiple-choice questions in the ARC-Challenge and Winogrande formats of the public
routing data (a few-shot prefix of answered questions, then the question), written by us, and one voice turn
that goes to premium. The learned router's cascade band is fitted where the training rows carry the cheap
models' answers (RouterBench-like traffic), so tests that need a turn in the band use these rather than voice
turns."""

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
    # Multi-step quantitative questions: harder for the cheap tiers, so some fall in a cascade band.
    ("Two resistors of 4 ohms and 12 ohms are connected in parallel to a 6 V battery. What is the total current?",
     ("0.5 A", "1 A", "2 A", "2.5 A")),
    ("A sample of gas at 300 K and 2 atm is heated to 450 K at constant volume. What is its new pressure?",
     ("1.3 atm", "2 atm", "3 atm", "4.5 atm")),
    ("A block slides down a frictionless ramp 5 m high. What is its speed at the bottom, using g = 10 m/s2?",
     ("5 m/s", "10 m/s", "50 m/s", "100 m/s")),
    ("A 2 kg cart moving at 3 m/s collides with a stationary 1 kg cart and they stick together. What is their "
     "speed after the collision?", ("1 m/s", "2 m/s", "3 m/s", "6 m/s")),
    ("A spring stretches 4 cm under a 2 N load. How far does it stretch under a 5 N load?",
     ("5 cm", "8 cm", "10 cm", "20 cm")),
)


def _block(question: str, options: tuple[str, ...], answer: str = "") -> str:
    text = question + "\n" + "\n".join(f"{k}) {o}" for k, o in zip("ABCD", options, strict=False)) + "\n" + ASK
    return text + ("\n" + answer if answer else "")


# A voice turn the learned router sends to premium (tests and benches that need the premium path).
PREMIUM_TURN = ("Design a sharded, multi-region architecture for our ticketing database with failover, and explain "
                "the trade-offs.")

WINO_ASK = 'Print only a single choice  from "A" or "B" without explanation. Answer:'
WINO_SHOTS: tuple[tuple[str, tuple[str, str], str], ...] = (
    ("The trophy did not fit in the suitcase because the _ was too big.", ("trophy", "suitcase"), "A"),
    ("Sarah lent her umbrella to Maria because _ was going to walk home in the rain.", ("Sarah", "Maria"), "B"),
    ("The glass broke when it fell on the tile, because the _ was fragile.", ("glass", "tile"), "A"),
)
WINO_QUESTIONS: tuple[tuple[str, tuple[str, str]], ...] = (
    ("The rope held the boat but snapped on the anchor, since the _ was heavier.", ("boat", "anchor")),
    ("Monica liked painting more than Erin did, so _ spent the weekend at the art class.", ("Monica", "Erin")),
    ("Jenny could not lift the box but Kate could, because _ was weaker.", ("Jenny", "Kate")),
    ("Ian asked Dennis for directions because _ had lived in the town for years.", ("Ian", "Dennis")),
)


def _wino_block(sentence: str, options: tuple[str, str], answer: str = "") -> str:
    text = (f"Please answer with the letter of the correct answer.\n\n{sentence}\nA) {options[0]}\nB) {options[1]}\n"
            + WINO_ASK)
    return text + ("\n" + answer if answer else "")


def few_shot_prompts() -> list[str]:
    prefix = "\n\n".join(_block(q, o, a) for q, o, a in SHOTS)
    wino = "\n\n".join(_wino_block(s, o, a) for s, o, a in WINO_SHOTS)
    return ([prefix + "\n\n" + _block(q, o) for q, o in QUESTIONS]
            + [wino + "\n\n" + _wino_block(s, o) for s, o in WINO_QUESTIONS])
