"""What a job is and how it may change, apart from how the API or a worker drives it."""
