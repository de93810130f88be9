//! The `exocom` command line: one module per subcommand group. (Stub.)
