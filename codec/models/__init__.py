"""The models: their maths, what must be exact, and how they are stored."""
