"""Command-line client: `python -m deployments.client "a prompt" -o out.png`.

Calls the HTTP API (streaming progress with --stream), saves the images (png, jpeg or webp), prints each image's
verification, and exits non-zero with the server's message when the request fails. The API key
comes from --api-key or VORTEX_API_KEY.
"""

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import requests


def output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def describe(item: dict) -> str:
    verification = item["verification"]
    scores = ", ".join(f"{name} {score:.3f}" for name, score in verification["scores"].items())
    verdict = "passed" if verification["passed"] else "failed: " + "; ".join(verification["reasons"])
    ensemble = verification["ensemble_score"]
    return f"seed {item['seed']}, {verdict} (ensemble {ensemble:.2f}; {scores}; attempts {len(item['attempts'])})"


def report_error(status: int, payload: dict, retry_after: str | None) -> int:
    message = payload.get("error", {}).get("message", str(payload))
    print(f"error {status}: {message}", file=sys.stderr)
    for slot, attempts in enumerate(payload.get("attempts") or []):
        for attempt in attempts:
            print(f"  image {slot}, seed {attempt['seed']}: {'; '.join(attempt['reasons'])}", file=sys.stderr)
    if retry_after:
        print(f"  retry after {retry_after} s", file=sys.stderr)
    return 1


def server_sent_events(response: requests.Response) -> Iterator[dict]:
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("-o", "--output", type=Path, help="Where to save (default image.FORMAT); n > 1 numbers them.")
    parser.add_argument("--url", default=os.environ.get("VORTEX_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("VORTEX_API_KEY"))
    parser.add_argument("--size", default="512x512")
    parser.add_argument("-n", type=int, default=1)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--negative-prompt")
    parser.add_argument("--format", choices=["png", "jpeg", "webp"], default="png", help="The images' file format.")
    parser.add_argument("--compression", type=int, help="jpeg and webp quality in percent (default 100).")
    parser.add_argument("--stream", action="store_true", help="Show progress as the server reports it.")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)

    body = {
        "prompt": args.prompt,
        "n": args.n,
        "size": args.size,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "negative_prompt": args.negative_prompt,
        "output_format": args.format,
        "output_compression": args.compression,
        "stream": args.stream,
    }
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = requests.post(
            f"{args.url.rstrip('/')}/v1/images/generations",
            json={key: value for key, value in body.items() if value is not None},
            headers=headers,
            timeout=args.timeout,
            stream=args.stream,
        )
    except requests.RequestException as error:
        print(f"error: cannot reach {args.url}: {error}", file=sys.stderr)
        return 2
    if response.status_code != 200:
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text}}
        return report_error(response.status_code, payload, response.headers.get("retry-after"))
    if args.stream:
        data = []
        for event in server_sent_events(response):
            if event["type"] == "vortex.progress":
                step = f" {event['step']}/{event['steps']}" if event["stage"] == "denoising" else ""
                print(f"attempt {event['attempt']}: {event['stage']}{step}", file=sys.stderr)
            elif event["type"] == "image_generation.completed":
                data.append(event)
            elif event["type"] == "error":
                return report_error(event["status"], event, None)
    else:
        data = response.json()["data"]
    output = args.output or Path(f"image.{args.format}")
    for path, item in zip(output_paths(output, len(data)), data, strict=True):
        path.write_bytes(base64.b64decode(item["b64_json"]))
        print(f"saved {path}: {describe(item)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
