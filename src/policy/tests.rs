//! Golden tests for policy diagnostics.
