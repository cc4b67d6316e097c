"""``qustream keys``: signing keys for validators, QRNG sources and accounts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Generate and inspect signing keys (ML-DSA-65 by default).",
                  no_args_is_help=True)


@app.command()
def gen(
    out: Path = typer.Option(..., "--out", "-o", help="Key file to write (mode 0600)."),
    algorithm: str = typer.Option("ml-dsa-65", help="ml-dsa-65 (default) or ed25519."),
) -> None:
    """Generate a key pair; print its public key and address. Never overwrites a file."""
    from protocol.keys import Algorithm, SigningKey

    if out.exists():
        typer.echo(f"error: {out} exists; refusing to overwrite a key", err=True)
        raise typer.Exit(2)
    key = SigningKey.generate(Algorithm.from_option(algorithm))
    key.save(out)
    typer.echo(json.dumps({"file": str(out), "address": key.public_key.address_hex,
                           "algorithm": key.algorithm.value}))


@app.command()
def show(path: Path = typer.Argument(..., help="Key file.")) -> None:
    """Print the public key and address of a key file (never the private seed)."""
    from protocol.keys import SigningKey

    key = SigningKey.load(path)
    typer.echo(json.dumps({"address": key.public_key.address_hex,
                           "algorithm": key.algorithm.value,
                           "public_key": key.public_key.to_text()}))
