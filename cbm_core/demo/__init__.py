"""The embedded Toy Birds world, its vision-language model, and the demo bundle."""
