"""Command-line client: `python -m deployments.client "a prompt" -o out.png`.

Calls the HTTP API, saves the images (png, jpeg or webp), prints each image's verification, and exits
non-zero with the server's message when the request fails. Every field of the request is an option,
made from `deployments.api.ImageRequest` (so `--help` lists them all, with the API's own words).
With --stream a progress bar follows the denoising steps, and previews (--partial-images) are saved
beside the image. The API key comes from --api-key or VORTEX_API_KEY.
"""

import argparse
import base64
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import requests
from tqdm import tqdm

from deployments.api import ImageRequest

# Shorter spellings kept from earlier versions of the client.
ALIASES = {
    "n": ["-n"],
    "num_inference_steps": ["--steps"],
    "output_format": ["--format"],
    "output_compression": ["--compression"],
}


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


def add_request_fields(parser: argparse.ArgumentParser) -> None:
    """One option per request field but `prompt`; unset options are not sent, so the service's defaults apply."""
    for name, field in ImageRequest.model_fields.items():
        if name == "prompt":
            continue
        flags = [f"--{name.replace('_', '-')}", *ALIASES.get(name, [])]
        kind = field.annotation
        if get_origin(kind) in (Union, types.UnionType):  # X | None
            kind = next(arg for arg in get_args(kind) if arg is not type(None))
        help_text = f"{field.description} (API default: {field.default})"
        if kind is bool:
            parser.add_argument(*flags, dest=name, action="store_true", default=None, help=help_text)
        elif get_origin(kind) is Literal:
            parser.add_argument(*flags, dest=name, choices=get_args(kind), help=help_text)
        else:
            parser.add_argument(*flags, dest=name, type=kind, help=help_text)


def stream_images(response: requests.Response, output: Path) -> list[dict] | int:
    """The streamed images, with a progress bar per attempt; previews are saved as OUTPUT.partialK.IMAGE.SUFFIX.
    Returns the exit status instead when the stream ends with an error."""
    images, bar = [], None
    try:
        for event in server_sent_events(response):
            if event["type"] == "vortex.progress":
                if event["stage"] == "denoising" and "step" in event:
                    if bar is None or bar.total != event["steps"] or event["step"] < bar.n:
                        if bar is not None:
                            bar.close()
                        bar = tqdm(
                            total=event["steps"], desc=f"attempt {event['attempt']}", unit="step", file=sys.stderr
                        )
                    bar.update(event["step"] - bar.n)
                    bar.set_postfix_str(f"denoising {event['step']}/{event['steps']}")
                elif bar is not None:
                    bar.set_postfix_str(event["stage"])
            elif event["type"] == "image_generation.partial_image":
                preview = output.with_name(
                    f"{output.stem}.partial{event['partial_image_index']}.{event['image_index']}{output.suffix}"
                )
                preview.write_bytes(base64.b64decode(event["b64_json"]))
                tqdm.write(
                    f"preview {event['partial_image_index']} of image {event['image_index']}: {preview}",
                    file=sys.stderr,
                )
            elif event["type"] == "image_generation.completed":
                images.append(event)
            elif event["type"] == "error":
                return report_error(event["status"], event, None)
    finally:
        if bar is not None:
            bar.close()
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("-o", "--output", type=Path, help="Where to save (default image.FORMAT); n > 1 numbers them.")
    parser.add_argument("--url", default=os.environ.get("VORTEX_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("VORTEX_API_KEY"))
    parser.add_argument("--timeout", type=float, default=300)
    add_request_fields(parser.add_argument_group("request fields (POST /v1/images/generations)"))
    args = parser.parse_args(argv)

    body = {name: getattr(args, name) for name in ImageRequest.model_fields if name != "prompt"}
    body = {"prompt": args.prompt, **{name: value for name, value in body.items() if value is not None}}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = requests.post(
            f"{args.url.rstrip('/')}/v1/images/generations",
            json=body,
            headers=headers,
            timeout=args.timeout,
            stream=bool(args.stream),
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
    output = args.output or Path(f"image.{args.output_format or 'png'}")
    data = stream_images(response, output) if args.stream else response.json()["data"]
    if isinstance(data, int):
        return data
    for path, item in zip(output_paths(output, len(data)), data, strict=True):
        path.write_bytes(base64.b64decode(item["b64_json"]))
        print(f"saved {path}: {describe(item)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
