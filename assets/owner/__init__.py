"""The owner's loop: releases behind the golden gate, the visitors' questions and the review queue."""
