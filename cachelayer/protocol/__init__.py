"""Wire formats: the neutral chat model and the OpenAI and Anthropic edges around it."""
