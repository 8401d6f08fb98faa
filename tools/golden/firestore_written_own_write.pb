
™
Sprojects/demo-inpaint/databases/(default)/documents/users/user_1/sessions/session-1!
processingStatusŠ
processing
promptŠa golden retriever•
Sprojects/demo-inpaint/databases/(default)/documents/users/user_1/sessions/session-1
processingStatus	Šqueued
promptŠa golden retriever