"""The S3 bucket for scripts too large for SubmitJob (``script_bucket=``): private, encrypted by default,
and emptied of old scripts by a lifecycle rule."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.resources import Found, Resource, aws_step, error_code, tag_list, tag_value

# The operator's default script_prefix: what the lifecycle rule expires and what cleanup may empty.
SCRIPT_PREFIX = "airflow-hpc/scripts"
LIFECYCLE_RULE_ID = "airflow-hpc-setup-expire-scripts"
PUBLIC_ACCESS_BLOCKED = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


class ScriptBucket(Resource):
    kind = "S3 bucket"

    def __init__(
        self, s3: Any, name: str, setup_name: str, *, region: str, kms_key_arn: str | None, expiry_days: int
    ) -> None:
        super().__init__(name, setup_name)
        self.s3 = s3
        self.region = region
        self.kms_key_arn = kms_key_arn
        self.expiry_days = expiry_days
        self.empty_on_delete = False  # cleanup --empty-bucket: also objects outside the script prefix

    def encryption_rule(self) -> dict[str, Any]:
        if self.kms_key_arn:
            # A bucket key makes S3 ask KMS once per bucket and period instead of once per object.
            return {
                "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": self.kms_key_arn},
                "BucketKeyEnabled": True,
            }
        return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}

    def lifecycle_rule(self) -> dict[str, Any]:
        return {
            "ID": LIFECYCLE_RULE_ID,
            "Filter": {"Prefix": f"{SCRIPT_PREFIX}/"},
            "Status": "Enabled",
            "Expiration": {"Days": self.expiry_days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }

    def find(self) -> Found | None:
        with aws_step(f"reading {self.kind} {self.name}"):
            try:
                self.s3.head_bucket(Bucket=self.name)
            except ClientError as error:
                if error_code(error) in ("404", "NoSuchBucket", "NotFound"):
                    return None
                if error_code(error) in ("403", "AccessDenied"):
                    return Found(owner=None, detail="exists, but not in this account (or not readable)")
                raise
            try:
                tags = self.s3.get_bucket_tagging(Bucket=self.name)["TagSet"]
            except ClientError as error:
                if error_code(error) != "NoSuchTagSet":
                    raise
                tags = []
        return Found(owner=tag_value(tags), detail=f"s3://{self.name}")

    def create(self) -> str:
        with aws_step(f"creating {self.kind} {self.name}"):
            params: dict[str, Any] = {"Bucket": self.name}
            if self.region != "us-east-1":  # the one region S3 refuses a LocationConstraint for
                params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self.s3.create_bucket(**params)
            # Tagged first: should a later step fail, the next run finds the bucket ours and completes it.
            self.s3.put_bucket_tagging(Bucket=self.name, Tagging={"TagSet": tag_list(self.tags)})
            self.s3.put_public_access_block(Bucket=self.name, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCKED)
            self.s3.put_bucket_encryption(
                Bucket=self.name, ServerSideEncryptionConfiguration={"Rules": [self.encryption_rule()]}
            )
            self.s3.put_bucket_lifecycle_configuration(
                Bucket=self.name, LifecycleConfiguration={"Rules": [self.lifecycle_rule()]}
            )
        return f"s3://{self.name}"

    def converge(self, found: Found) -> list[str]:
        changes: list[str] = []
        with aws_step(f"checking {self.kind} {self.name}"):
            if self._public_access_block() != PUBLIC_ACCESS_BLOCKED:
                self.s3.put_public_access_block(Bucket=self.name, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCKED)
                changes.append("public access blocked")
            if self._encryption() != _encryption_fields(self.encryption_rule()):
                self.s3.put_bucket_encryption(
                    Bucket=self.name, ServerSideEncryptionConfiguration={"Rules": [self.encryption_rule()]}
                )
                changes.append("default encryption " + ("SSE-KMS" if self.kms_key_arn else "SSE-S3"))
            rules = self._lifecycle_rules()
            ours = [rule for rule in rules if rule.get("ID") == LIFECYCLE_RULE_ID]
            if [_lifecycle_fields(rule) for rule in ours] != [_lifecycle_fields(self.lifecycle_rule())]:
                others = [rule for rule in rules if rule.get("ID") != LIFECYCLE_RULE_ID]  # someone else's: kept
                self.s3.put_bucket_lifecycle_configuration(
                    Bucket=self.name, LifecycleConfiguration={"Rules": [*others, self.lifecycle_rule()]}
                )
                changes.append(f"lifecycle rule: scripts expire after {self.expiry_days} days")
        return changes

    def _public_access_block(self) -> dict[str, Any]:
        try:
            config = self.s3.get_public_access_block(Bucket=self.name)["PublicAccessBlockConfiguration"]
        except ClientError as error:
            if error_code(error) != "NoSuchPublicAccessBlockConfiguration":
                raise
            return {}
        return {key: bool(config.get(key)) for key in PUBLIC_ACCESS_BLOCKED}

    def _encryption(self) -> tuple[Any, ...]:
        try:
            rules = self.s3.get_bucket_encryption(Bucket=self.name)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as error:
            if error_code(error) != "ServerSideEncryptionConfigurationNotFoundError":
                raise
            return ()
        return _encryption_fields(rules[0]) if rules else ()

    def _lifecycle_rules(self) -> list[dict[str, Any]]:
        try:
            return list(self.s3.get_bucket_lifecycle_configuration(Bucket=self.name)["Rules"])
        except ClientError as error:
            if error_code(error) != "NoSuchLifecycleConfiguration":
                raise
            return []

    def _versions(self) -> list[dict[str, str]]:
        """Every object version and delete marker (an unversioned bucket's objects have version "null")."""
        found: list[dict[str, str]] = []
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.name):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                found.append({"Key": item["Key"], "VersionId": item["VersionId"]})
        return found

    def deletion_blockers(self, found: Found) -> list[str]:
        with aws_step(f"listing {self.kind} {self.name}"):
            foreign = sorted({v["Key"] for v in self._versions() if not v["Key"].startswith(f"{SCRIPT_PREFIX}/")})
        if not foreign or self.empty_on_delete:
            return []
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return [
            f"{self.kind} {self.name} holds {len(foreign)} object(s) outside {SCRIPT_PREFIX}/ that the provider "
            f"did not write ({shown}): move or delete them, or run cleanup with --empty-bucket"
        ]

    def delete(self, found: Found) -> list[str]:
        with aws_step(f"deleting {self.kind} {self.name}"):
            versions = self._versions()
            if not self.empty_on_delete and any(not v["Key"].startswith(f"{SCRIPT_PREFIX}/") for v in versions):
                raise SetupError(f"{self.kind} {self.name}: objects were added outside {SCRIPT_PREFIX}/ meanwhile")
            for start in range(0, len(versions), 1000):
                self.s3.delete_objects(Bucket=self.name, Delete={"Objects": versions[start : start + 1000]})
            self.s3.delete_bucket(Bucket=self.name)
        return [f"emptied {len(versions)} object version(s) first"] if versions else []


def _encryption_fields(rule: dict[str, Any]) -> tuple[Any, ...]:
    default = rule.get("ApplyServerSideEncryptionByDefault", {})
    algorithm = default.get("SSEAlgorithm")
    bucket_key = bool(rule.get("BucketKeyEnabled")) if algorithm == "aws:kms" else None
    return (algorithm, default.get("KMSMasterKeyID"), bucket_key)


def _lifecycle_fields(rule: dict[str, Any]) -> tuple[Any, ...]:
    prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix"))
    return (
        prefix,
        rule.get("Status"),
        rule.get("Expiration", {}).get("Days"),
        rule.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation"),
    )
