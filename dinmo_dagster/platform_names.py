"""The destination platforms shipped with the package: one ``type`` per module of ``dinmo_dagster.platforms``.

The one list both registries read: the connector registry (``connectors.py``), which accepts these types in a
project without importing any platform, and the delivery SDK's (``platforms/__init__.py``), which imports a
platform's module on first lookup. Adding a platform is its module plus its name here. No imports: reading
the list costs nothing.
"""

from __future__ import annotations

BUILTIN_PLATFORMS: tuple[str, ...] = (
    # CRM, support and customer data
    "hubspot", "intercom", "zendesk", "salesforce_marketing_cloud", "firestore",
    # messaging, e-mail, SMS and push
    "braze", "klaviyo", "brevo", "mailchimp", "sendgrid", "iterable", "emarsys", "actito", "batch", "splio",
    "selligent", "dialog_insight", "june", "all_my_sms",
    # advertising
    "meta_ads", "google_ads", "google_dv360", "google_sa360", "microsoft_ads", "linkedin_ads", "pinterest_ads",
    "snapchat_ads", "tiktok_ads", "reddit_ads", "x_ads", "criteo",
)  # fmt: skip
