"""What all three systems share: run directories, atomic files, seeding, devices, errors."""
