"""The built-in digit models: their training recipes, tokenizer and the classifier that scores them."""
