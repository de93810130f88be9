//! Tests of the relay against a scripted router over in-memory pipes.
