"""verl's tool base class, schemas and its gsm8k demo tool (copies; see each file's header)."""
