"""symopt test suite (a package, so test modules can import shared helpers)."""
