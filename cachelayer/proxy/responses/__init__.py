"""The Responses API's state: stored responses, previous_response_id, GET and DELETE."""
