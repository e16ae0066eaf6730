"""Pure: no boto3, no settings lookups."""
