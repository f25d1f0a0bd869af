"""The consent domain: vocabulary, policy, keywords, phone numbers, reply texts. No Flask, SQL or Redis."""
