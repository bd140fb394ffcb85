"""Typed task definitions shared by the producer and the worker in tests/sdk/test_tasks.py (one module that
both sides import, as an app would)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pydantic

from runq import TaskContext, task


class User(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0)


class Point(msgspec.Struct):
    x: int
    y: int


class Greeting(pydantic.BaseModel):
    text: str
    length: int


@task(queue="mail", retries=2, timeout=30)
async def send_email(ctx: TaskContext, to: str, subject: str = "hello") -> dict[str, Any]:
    await asyncio.sleep(0)  # an asyncio call: this module's worker runs on asyncio
    return {"to": to, "subject": subject, "attempt": ctx.attempt, "queue": ctx.queue}


@task
def add(a: int, b: int = 1) -> int:
    return a + b


@task
def greet(user: User, point: Point | None = None) -> Greeting:
    text = f"hi {user.name} ({user.age})" + (f" at {point.x},{point.y}" if point is not None else "")
    return Greeting(text=text, length=len(text))


@task(key="welcome-{to}", priority=3)
def welcome(to: str) -> str:
    return to


@task
def variadic(first: int, *rest: int, **named: int) -> list[int]:
    return [first, *rest, *sorted(named.values())]


@task
def legacy_shape(payload: Any, greeting: str = "hi") -> str:
    # a parameter after the first is an argument like any other, never the context
    return f"{greeting} {payload}"
