"""Streaming video sessions: a StreamingVLM-style bounded KV cache with Mosaic-style recall."""
from corpusflow.actors.streaming.config import StreamConfig
from corpusflow.actors.streaming.session import Answer, Commentary, SessionClosed, StreamSession, load_streaming_model

__all__ = ["Answer", "Commentary", "SessionClosed", "StreamConfig", "StreamSession", "load_streaming_model"]
