"""``kdfast generate``: continue a prompt with a causal language model."""

from __future__ import annotations

import sys

import typer

from kdfast.cli import options
from kdfast.cli.main import app


@app.command("generate")
def generate(
    prompt: str = typer.Option(..., help="The text to continue."),
    model: str = typer.Option("gpt2", help="Hugging Face model name or local folder (any causal LM)."),
    max_new_tokens: int = typer.Option(100, help="Tokens to generate (fewer if the model ends the text)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature; 0 = greedy."),
    top_k: int = typer.Option(50, help="Sample among the k most likely tokens; 0 = off."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold in (0, 1]; 1 = off."),
    seed: int = typer.Option(0, help="The same seed gives the same text."),
    num_return_sequences: int = typer.Option(1, help="Continuations of the prompt, generated as one batch."),
    stream: bool = typer.Option(False, help="Print the text as it is generated (one sequence)."),
    ignore_eos: bool = typer.Option(False, help="Do not stop at the end-of-text token: exactly --max-new-tokens."),
    device: str = options.DEVICE,
) -> None:
    """Continue a prompt (with the KV cache). Prints prompt + continuation on stdout and the speed on stderr."""
    from kdfast.generate import GenerateConfig
    from kdfast.generate import run as run_generate

    cfg = GenerateConfig(prompt=prompt, model=model, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p, seed=seed, num_return_sequences=num_return_sequences,
                         stream=stream, ignore_eos=ignore_eos, device=device)
    if stream:
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
