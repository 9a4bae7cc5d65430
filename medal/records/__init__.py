"""What a finished run records about itself for people: MODEL_CARD.md."""
