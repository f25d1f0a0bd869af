"""To Meta: the Cloud API client and its errors, rate limits, the sender, the send loop and the worker."""
