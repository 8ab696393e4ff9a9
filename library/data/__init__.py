"""Dataset code shared by the preparation scripts (finetune/, tools/) and the trainer."""
