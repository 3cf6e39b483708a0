"""Projects own every file, job and model."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Project
from app.ids import new_id, now

DEFAULT_PROJECT = "default"


def ensure_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=new_id("proj"), name=name, created_at=now())
        session.add(project)
        session.flush()
    return project
