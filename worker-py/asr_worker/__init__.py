"""ASR worker: Fun-ASR-Nano behind the asr.v1 gRPC contract, batched across streams."""
