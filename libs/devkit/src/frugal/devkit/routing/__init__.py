"""Dev-only router training and evaluation: the public routing data as tier problems (`evaldata`), the
labelled conversational turns (`conversational`), the evaluation protocol (`routing_eval`), and the scripts
that rebuild the shipped artifacts bit for bit (`train_hybrid` for hybrid-v2, `train_learned` for the learned
router and the cascade's answer scorer). The router runtime never imports this package."""
