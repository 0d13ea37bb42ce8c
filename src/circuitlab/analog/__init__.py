"""analog: AnalogSeeker 2025, a domain LM for analog circuit design."""
