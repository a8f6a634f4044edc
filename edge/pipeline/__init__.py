"""The client machine: its steps and their table, delivery, the hot tier, the exchange."""
