"""Command-line interface (click); the library never imports it."""
