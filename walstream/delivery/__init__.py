"""Delivery: from WAL records to targets, with retries and dead-lettering."""
