"""circuits: O'Neill & Bui 2024, circuit identification with discrete sparse autoencoders."""
