"""``kdfast generate``: continue a prompt with a causal language model."""

from __future__ import annotations

import sys

from kdfast.cli.main import app
from kdfast.configs import GenerateConfig
from kdfast.options import command


@app.command("generate")
@command(GenerateConfig)
def generate(cfg: GenerateConfig) -> None:
    """Continue a prompt (with the KV cache). Prints prompt + continuation on stdout and the speed on stderr."""
    from kdfast.generate import run as run_generate

    prompt = cfg.prompt
    if cfg.stream:
        shown = False

        def show(text: str) -> None:  # the prompt goes out with the first piece, after any error from loading
            nonlocal shown
            sys.stdout.write(text if shown else prompt + text)
            sys.stdout.flush()
            shown = True

        result = run_generate(cfg, on_text=show)
        print("" if shown else prompt)
    else:
        result = run_generate(cfg)
        for i, text in enumerate(result.texts, 1):
            if len(result.texts) > 1:
                print(f"--- sequence {i} ---")
            print(text)
    print(f"{result.new_tokens} new tokens in {result.seconds:.3f} s: {result.tokens_per_s:.1f} tokens/s "
          f"on {result.device}", file=sys.stderr)
