"""Guest software: the freestanding support library, built-in programs and their build."""
