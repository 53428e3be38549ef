"""Transcribes one WAV file with PyPI funasr-python, unchanged, as its users do.

    python funasr_python_client.py ws://127.0.0.1:PORT FILE.wav PCM_OUT

Drives the client's documented asynchronous file API (AsyncFunASRClient.recognize_file
with a callback) in 2pass mode and prints one JSON line on stdout: every result the
client surfaced, in order, as {"kind": "partial"|"final", "text": ...}, and the text it
returned. It also writes to PCM_OUT the PCM16 the client sends for FILE (its own
AudioProcessor's conversion, which differs from the file's samples by rounding), so the
e2e tests (third-party-clients.test.ts) can ask the gateway for the reference finals of
exactly that audio; this script only reports what the client saw.

funasr-python treats every message with is_final true as "the" final result and stops
listening once end of input is sent and one has arrived, so with IS_FINAL_MODE=seed it
drops the finals after the first; with cpp it sees every segment final (as a partial)
and exactly one final at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from funasr_client import AsyncFunASRClient, SimpleCallback


async def transcribe(url: str, wav: str) -> tuple[dict[str, object], bytes]:
    """Runs the client on `wav` against `url`; returns what it surfaced and the PCM it sent."""
    seen: list[dict[str, str]] = []
    callback = SimpleCallback(
        on_partial=lambda r: seen.append({"kind": "partial", "text": r.text}),
        on_final=lambda r: seen.append({"kind": "final", "text": r.text}),
        on_error=lambda e: seen.append({"kind": "error", "text": str(e)}),
    )
    # timeout bounds the client's wait for a final; log_level keeps its INFO lines off stdout.
    client = AsyncFunASRClient(server_url=url, timeout=30.0, log_level="WARNING")
    try:
        result = await client.recognize_file(wav, callback)
    finally:
        await client.close()
    # The client runs callbacks as background tasks: let the last ones land.
    await asyncio.sleep(0.2)
    # The same conversion the client's AudioFileStreamer applies before streaming.
    samples, rate = client.audio_processor.load_audio_file(wav)
    pcm = client.audio_processor.convert_to_target_format(samples, rate)
    return {"results": seen, "returned": result.text}, pcm


def main(argv: list[str]) -> int:
    """Entry point: prints the JSON report; exit 1 with a message when the client fails."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        report, pcm = asyncio.run(transcribe(argv[1], argv[2]))
    except Exception as e:  # the test prints the client's own failure
        print(f"funasr-python failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    with open(argv[3], "wb") as f:
        f.write(pcm)
    print(json.dumps(report, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
