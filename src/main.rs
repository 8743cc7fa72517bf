//! The `callrec` command line: parses flags and calls into the library.

fn main() {}
