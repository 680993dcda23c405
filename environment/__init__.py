"""Checks of the machine a user runs us on (capsnet check-gpu), apart from any stage."""
