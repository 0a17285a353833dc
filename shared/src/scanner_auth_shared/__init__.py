"""What every scanner-auth service shares."""
