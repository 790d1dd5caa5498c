"""The `omnilive` command: one entry point over the model's tools and the server.

It sits above both packages: `train`, `eval`, `synth`, `prep`, `render` and `bench stream` live here
beside each other, `serve` and `bench serve` stay with the server (avatar_server.commands), so the
server package never imports the trainer, the studio or the evaluation.
"""
