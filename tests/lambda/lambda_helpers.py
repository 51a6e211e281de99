"""Helpers for the Lambda tests: API Gateway v1 proxy events for a warm container."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

from deploy import project

# dev with its own bucket names and touch off (zappa_settings.json): the one bundle of the session, which the handler
# tests drive and test_deploy.py deploys.
STAGE = "moto"
API_ID = "a1b2c3d4e5"
REGION = "us-east-1"
HOST = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
LAMBDA_MAX_PAYLOAD_BYTES = 6_291_456


def zappa_stage_settings(stage: str = STAGE) -> dict[str, Any]:
    """The stage's settings as zappa resolves them (`extends` merged)."""
    return project.stage_settings(stage)


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    is_base64: bool
    seconds: float

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, values in self.headers.items():
            if key.lower() == name.lower():
                return values[-1]
        return None


@dataclass
class LambdaContainer:
    """One warm container: zappa's handler in an isolated interpreter, fed API Gateway v1 proxy events."""

    process: subprocess.Popen[str]
    stage: str = STAGE
    cookies: dict[str, str] = field(default_factory=dict)
    invocations: list[tuple[str, float]] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    def invoke(self, event: dict[str, Any]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        payload = json.dumps(event)
        # Lambda refuses a synchronous invocation over 6 MB before the function sees it.
        assert len(payload.encode()) <= LAMBDA_MAX_PAYLOAD_BYTES, f"Lambda would refuse this {len(payload)}-byte event"
        self.process.stdin.write(payload + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the container died (exit code {self.process.wait()}); see the captured stderr")
        reply = json.loads(line)
        self.invocations.append((event.get("path") or json.dumps(event)[:40], reply["seconds"]))
        self.cpu_seconds.append(reply.get("cpu_seconds", 0.0))
        if "error" in reply:
            raise AssertionError(f"the handler raised:\n{reply['error']}")
        return reply["response"]

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        cookies: bool = True,
    ) -> Response:
        """Send one HTTP request through API Gateway (REST API, Lambda proxy integration) to the handler."""
        all_headers = {
            "Host": HOST,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Port": "443",
            "X-Forwarded-For": "203.0.113.7",
            "User-Agent": "carsite-lambda-test",
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        }
        if cookies and self.cookies:
            all_headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        all_headers.update(headers or {})
        is_base64 = isinstance(body, bytes)
        event = {
            "resource": "/{proxy+}",
            "path": path,
            "httpMethod": method,
            "headers": all_headers,
            "multiValueHeaders": {name: [value] for name, value in all_headers.items()},
            "queryStringParameters": query,
            "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
            "pathParameters": {"proxy": path.lstrip("/")},
            "stageVariables": None,
            "requestContext": {
                "resourcePath": "/{proxy+}",
                "httpMethod": method,
                "path": f"/{self.stage}{path}",
                "stage": self.stage,
                "requestId": str(uuid.uuid4()),
                "accountId": "123456789012",
                "apiId": API_ID,
                "protocol": "HTTP/1.1",
                "identity": {"sourceIp": "203.0.113.7", "userAgent": "carsite-lambda-test"},
            },
            "body": base64.b64encode(body).decode() if is_base64 else body,
            "isBase64Encoded": is_base64,
        }
        reply = self.invoke(event)
        headers_out: dict[str, list[str]] = reply.get("multiValueHeaders") or {
            k: [v] for k, v in (reply.get("headers") or {}).items()
        }
        raw = reply.get("body") or ""
        response_body = base64.b64decode(raw) if reply.get("isBase64Encoded") else raw.encode()
        for name, values in headers_out.items():
            if name.lower() == "set-cookie":
                for value in values:
                    cookie = SimpleCookie()
                    cookie.load(value)
                    for key, morsel in cookie.items():
                        if morsel["max-age"] == "0" or not morsel.value:
                            self.cookies.pop(key, None)
                        else:
                            self.cookies[key] = morsel.value
        return Response(
            status=reply["statusCode"],
            headers=headers_out,
            body=response_body,
            is_base64=bool(reply.get("isBase64Encoded")),
            seconds=self.invocations[-1][1],
        )

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post_form(self, path: str, fields: dict[str, str], **kwargs: Any) -> Response:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": f"https://{HOST}",
            "Referer": f"https://{HOST}/{self.stage}{path}",
        }
        return self.request("POST", path, body=urlencode(fields), headers=headers, **kwargs)

    def post_multipart(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]) -> Response:
        body, content_type = multipart_body(fields, files)
        headers = {
            "Content-Type": content_type,
            "Origin": f"https://{HOST}",
            "Referer": f"https://{HOST}/{self.stage}{path}",
        }
        return self.request("POST", path, body=body, headers=headers)

    def csrf_token(self, path: str) -> str:
        """GET a page with a form and return its CSRF token (the cookie arrives with it)."""
        page = self.get(path)
        assert page.status == 200, f"GET {path} -> {page.status}"
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match, f"no CSRF token in {path}"
        return match.group(1)


def multipart_body(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data as a browser sends it: files maps field -> (filename, content type, bytes)."""
    boundary = f"----carsite{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content_type, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
